"""The training loop on real tiny models of the built-in task: metrics, checkpoints, traces,
the shared reference cache, resume, and failures that name their cause."""

import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpo_core.data import DatasetError, load_preferences, write_jsonl
from gpo_core.logprobs import collate_causal, sequence_logprobs
from gpo_core.train.loop import train
from gpo_core.train.metrics import JsonlSink, ListSink
from gpo_core.train.run import NonFiniteLossError, RunContext, TrainingError
from gpo_core.train.spec import TrainingSpec

STEP_KEYS = {
    "loss", "rho_mean", "rho_std", "accuracy", "reward_chosen", "reward_rejected", "margin",
    "grad_norm", "lr", "pairs", "pairs_per_s", "tokens_per_s", "padded_fraction", "peak_memory_gib",
}  # fmt: skip


def make_spec(task, tmp_path: Path, cache_dir: Path, **overrides) -> TrainingSpec:
    fields = {
        "policy": task.artifacts.model_dir,
        "dataset": task.artifacts.train_pairs,
        "output_dir": str(tmp_path / "run"),
        "loss": "logistic",
        "beta": 0.1,
        "lr": 1e-3,
        "batch_size": 8,
        "steps": 4,
        "cache_dir": str(cache_dir),
        **overrides,
    }
    return TrainingSpec(**fields)


def test_run_writes_metrics_traces_and_loadable_checkpoints(small_task, tmp_path, cache_dir) -> None:
    spec = make_spec(
        small_task, tmp_path, cache_dir, steps=6, checkpoint_every=2, trace_every=3,
        eval_pairs=small_task.artifacts.eval_pairs, eval_prompts=small_task.artifacts.eval_prompts, trace_prompts=12,
    )  # fmt: skip
    metrics_file = tmp_path / "metrics.jsonl"
    result = train(spec, JsonlSink(metrics_file))
    assert result.steps == 6 and not result.stopped
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(r.keys() >= STEP_KEYS for r in steps)
    traces = [r for r in records if r["kind"] == "trace"]
    assert [t["step"] for t in traces] == [0, 3, 6]
    assert traces[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # pi_theta = pi_ref at the start
    assert traces[0]["square_loss"] == pytest.approx(0.0, abs=1e-5)
    assert traces[-1]["square_loss"] > 0 and traces[-1]["kl_samples"] == 12
    assert 0.0 <= result.padded_fraction < 0.5
    model = AutoModelForCausalLM.from_pretrained(result.final_model_dir)
    assert model.config.vocab_size > 0
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-0000002", "step-0000004"]
    AutoModelForCausalLM.from_pretrained(checkpoints[-1])


def test_the_end_record_says_where_the_time_went_and_a_run_can_skip_its_first_trace(
    small_task, tmp_path, cache_dir
) -> None:
    spec = make_spec(
        small_task, tmp_path, cache_dir, steps=4, checkpoint_every=2, trace_every=2, trace_at_start=False,
        eval_pairs=small_task.artifacts.eval_pairs, eval_prompts=small_task.artifacts.eval_prompts, trace_prompts=8,
    )  # fmt: skip
    sink = ListSink()
    started = time.perf_counter()
    train(spec, sink)
    wall = time.perf_counter() - started
    assert [r["step"] for r in sink.records if r["kind"] == "trace"] == [2, 4]  # none before the first step
    (end,) = [r for r in sink.records if r["kind"] == "end"]
    phases = end["seconds"]
    assert set(phases) == {"data", "reference", "load", "steps", "trace", "checkpoint", "save"}
    assert all(seconds > 0 for seconds in phases.values())
    assert sum(phases.values()) == pytest.approx(wall, rel=0.1)  # every part of the run is in one phase
    steps = sum(r["pairs"] / r["pairs_per_s"] for r in sink.records if r["kind"] == "step")
    assert steps <= phases["steps"] * 1.01


def test_reference_pass_is_shared_by_a_sweep(small_task, tmp_path, cache_dir) -> None:
    outcomes = []
    for i, (loss, beta) in enumerate([("logistic", 0.1), ("square", 0.5), ("savage", 1.0)]):
        spec = make_spec(small_task, tmp_path / str(i), cache_dir, loss=loss, beta=beta, steps=1)
        outcomes.append(train(spec, ListSink()).reference_cache)
    assert outcomes == ["miss", "hit", "hit"]
    assert len(list((cache_dir / "reference-logprobs").glob("*.pt"))) == 1
    # other tokenization settings are another reference pass
    spec = make_spec(small_task, tmp_path / "other", cache_dir, steps=1, max_prompt_length=16)
    assert train(spec, ListSink()).reference_cache == "miss"


def test_cached_reference_logprobs_match_an_independent_computation(small_task, tmp_path, cache_dir) -> None:
    spec = make_spec(small_task, tmp_path, cache_dir, steps=1)
    train(spec, ListSink())
    (stored,) = (cache_dir / "reference-logprobs").glob("*.pt")
    cached = torch.load(stored)
    tokenizer = small_task.tokenizer()
    model = small_task.reference_model().eval()
    records = load_preferences(small_task.artifacts.train_pairs)
    scored = torch.isfinite(cached["chosen"]).nonzero().flatten().tolist()  # the pairs this run saw
    checked = 0
    for i in scored:
        prompt = tokenizer(records[i]["prompt"])["input_ids"]
        chosen = tokenizer(records[i]["chosen"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(prompt) > spec.max_prompt_length or len(chosen) > spec.max_response_length:
            continue  # truncated for training: not what this independent computation scores
        checked += 1
        with torch.no_grad():
            expected = sequence_logprobs(model, collate_causal([prompt], [chosen], tokenizer.pad_token_id))
        assert float(cached["chosen"][i]) == pytest.approx(float(expected[0]), abs=1e-4)
    assert checked >= 3


def test_the_reference_pass_covers_the_pairs_a_run_sees_and_grows_as_runs_need_more(
    small_task, tmp_path, cache_dir
) -> None:
    """Issue 28, item 6: the up-front reference pass scored every pair of the file where a short
    run uses a few; it scores the pairs the run will see, and later runs extend the shared cache."""
    from gpo_core.train.data import load_training_data, total_steps
    from gpo_core.train.reference import visited_pairs

    def stored() -> torch.Tensor:
        (path,) = (cache_dir / "reference-logprobs").glob("*.pt")
        return torch.load(path)["chosen"]

    short = make_spec(small_task, tmp_path / "short", cache_dir, steps=1)
    assert train(short, ListSink()).reference_cache == "miss"
    data = load_training_data(short)
    first = stored()
    assert torch.isfinite(first).nonzero().flatten().tolist() == visited_pairs(short, data.pairs, 1, 1)
    assert int(torch.isfinite(first).sum()) == 8 < len(data.pairs)

    longer = make_spec(small_task, tmp_path / "longer", cache_dir, steps=6)
    assert train(longer, ListSink()).reference_cache == "miss"  # the pairs it adds are computed
    grown = stored()
    seen = visited_pairs(longer, data.pairs, total_steps(longer, len(data.pairs), 1), 1)
    assert torch.isfinite(grown).nonzero().flatten().tolist() == seen and len(seen) > 8
    kept = torch.isfinite(first)
    assert torch.equal(grown[kept], first[kept])  # what was there stays as it was
    again = make_spec(small_task, tmp_path / "again", cache_dir, steps=3)
    assert train(again, ListSink()).reference_cache == "hit"  # its pairs are among those


def test_stop_then_resume_ends_with_exactly_the_requested_steps(small_task, tmp_path, cache_dir) -> None:
    straight = train(make_spec(small_task, tmp_path / "straight", cache_dir, steps=6), ListSink())

    sink = ListSink()
    stop_after_three = RunContext(should_stop=lambda: any(r.get("step") == 3 for r in sink.records))
    spec = make_spec(small_task, tmp_path / "interrupted", cache_dir, steps=6)
    first = train(spec, sink, stop_after_three)
    assert first.stopped and first.steps == 3 and first.final_model_dir is None
    assert (Path(spec.output_dir) / "checkpoints" / "step-0000003").exists()

    resumed_sink = ListSink()
    second = train(spec, resumed_sink)
    assert resumed_sink.records[0] == {
        "kind": "resumed",
        "step": 3,
        "checkpoint": str(Path(spec.output_dir) / "checkpoints" / "step-0000003"),
    }
    assert second.steps == 6 and [r["step"] for r in resumed_sink.records if r["kind"] == "step"] == [4, 5, 6]
    a = AutoModelForCausalLM.from_pretrained(straight.final_model_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(second.final_model_dir).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)


class _Planted:
    """Unpickling this runs code (creates the marker file): what a poisoned checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_poisoned_trainer_state_is_refused_and_runs_no_code(small_task, tmp_path, cache_dir) -> None:
    sink = ListSink()
    spec = make_spec(small_task, tmp_path, cache_dir, steps=3)
    train(spec, sink, RunContext(should_stop=lambda: any(r.get("step") == 1 for r in sink.records)))
    state = Path(spec.output_dir) / "checkpoints" / "step-0000001" / "trainer_state.pt"
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "optimizer": _Planted(marker)}, state)
    with pytest.raises(TrainingError, match="not a trainer state"):
        train(spec, ListSink())
    assert not marker.exists()


def test_non_finite_loss_fails_with_the_step(small_task, tmp_path, cache_dir) -> None:
    trained = train(make_spec(small_task, tmp_path / "first", cache_dir, steps=3, lr=5e-3), ListSink())
    spec = make_spec(
        small_task, tmp_path / "second", cache_dir, policy=small_task.artifacts.model_dir,
        reference=trained.final_model_dir, loss="exponential", beta=1e4,
    )  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 1"):
        train(spec, ListSink())
    # a later blow-up keeps the last good checkpoint: stop after 2 clean steps, then diverge
    clean = make_spec(small_task, tmp_path / "third", cache_dir, steps=4, checkpoint_every=2)
    sink = ListSink()
    train(clean, sink, RunContext(should_stop=lambda: any(r.get("step") == 2 for r in sink.records)))
    checkpoint = Path(clean.output_dir) / "checkpoints" / "step-0000002"
    before = (checkpoint / "model.safetensors").read_bytes()
    diverging = clean.model_copy(update={"reference": trained.final_model_dir, "loss": "exponential", "beta": 1e4})
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        train(diverging, ListSink())
    assert (checkpoint / "model.safetensors").read_bytes() == before


def test_bad_dataset_fails_before_any_training(small_task, tmp_path, cache_dir) -> None:
    records = load_preferences(small_task.artifacts.train_pairs)[:5]
    records[2] = {"prompt": records[2]["prompt"], "chosen": "", "rejected": "x"}
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DatasetError, match=r"bad.jsonl:3: field 'chosen' is empty"):
        train(make_spec(small_task, tmp_path, cache_dir, dataset=str(path)), ListSink())
    assert not (tmp_path / "run").exists()


def test_truncation_is_counted_and_pairs_it_makes_identical_are_dropped(small_task, tmp_path, cache_dir) -> None:
    records = load_preferences(small_task.artifacts.train_pairs)[:64]
    # Half the pairs: rejected = chosen + more words, so only their ends tell them apart.
    records = [{**r, "rejected": r["chosen"] + " " + r["rejected"]} if i % 2 else r for i, r in enumerate(records)]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    sink = ListSink()
    train(make_spec(small_task, tmp_path, cache_dir, steps=1, max_response_length=2, dataset=str(path)), sink)
    report = next(r for r in sink.records if r["kind"] == "data")
    tokenizer = AutoTokenizer.from_pretrained(small_task.artifacts.model_dir)

    def first_two(text: str) -> list[int]:
        return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id][:2]

    expected_identical = sum(first_two(r["chosen"]) == first_two(r["rejected"]) for r in records)
    assert expected_identical > 0  # the test means something: two tokens do not tell these pairs apart
    assert report["identical_dropped"] == expected_identical
    assert report["pairs"] == len(records) - expected_identical
    assert report["responses_cut"] > 0


def test_a_dataset_with_no_preference_left_is_refused(small_task, tmp_path, cache_dir) -> None:
    records = [{**r, "rejected": r["chosen"]} for r in load_preferences(small_task.artifacts.train_pairs)[:8]]
    path = write_jsonl(tmp_path / "same.jsonl", records)
    with pytest.raises(TrainingError, match="same tokens once cut to max_response_length=512: nothing to learn"):
        train(make_spec(small_task, tmp_path, cache_dir, dataset=str(path)), ListSink())


def test_adafactor_bf16_and_epochs(small_task, tmp_path, cache_dir) -> None:
    spec = make_spec(
        small_task, tmp_path, cache_dir, optimizer="adafactor", precision="bf16", steps=None, epochs=0.1,
        schedule="cosine", warmup_steps=1, grad_accumulation=2, batch_size=4,
    )  # fmt: skip
    result = train(spec, ListSink())
    n_pairs = len(load_preferences(small_task.artifacts.train_pairs))
    assert result.steps == math.ceil(0.1 * n_pairs / 8)  # 8 pairs per step: 4 per micro-batch, 2 accumulated
    assert result.final_model_dir


def test_encoder_decoder_trains(tmp_path, cache_dir) -> None:
    from dataclasses import replace

    from gpo_core.task.build import BuiltTask, build_task, task_settings
    from gpo_core.task.model import SFTSettings

    settings = replace(
        task_settings("small", seed=0, architecture="t5"),
        sft=SFTSettings(steps=10, batch_size=16), pair_documents=60, eval_prompts=8,
    )  # fmt: skip
    task = BuiltTask(build_task(tmp_path / "tasks", settings).root)
    spec = make_spec(
        task, tmp_path, cache_dir, steps=2, trace_every=2, eval_pairs=task.artifacts.eval_pairs,
        eval_prompts=task.artifacts.eval_prompts, trace_prompts=4,
    )  # fmt: skip
    sink = ListSink()
    result = train(spec, sink)
    assert result.steps == 2
    assert [r["step"] for r in sink.records if r["kind"] == "trace"] == [0, 2]
    # The first step scores the reference's own weights: rho is 0 without dropout (the default,
    # as in TRL), and not with T5's dropout of 0.1, which the reference's log-probs never had.
    first = next(r for r in sink.records if r["kind"] == "step")
    assert abs(first["rho_mean"]) < 1e-4
    with_dropout = ListSink()
    train(spec.model_copy(update={"output_dir": str(tmp_path / "dropout"), "disable_dropout": False}), with_dropout)
    assert abs(next(r for r in with_dropout.records if r["kind"] == "step")["rho_mean"]) > 1e-2


def test_disable_dropout_reaches_modules_and_attention_rates() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    from gpo_core.train.pairs import disable_dropout

    model = T5ForConditionalGeneration(
        T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, vocab_size=40, decoder_start_token_id=0)
    )
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates and set(rates) == {0.1} and any(getattr(m, "dropout", None) == 0.1 for m in model.modules())
    assert disable_dropout(model) > len(rates)  # the modules and the attention layers' float rates
    model.train()
    ids = torch.tensor([[5, 6, 7, 1]])
    first, second = (model(input_ids=ids, labels=ids).logits for _ in range(2))
    assert torch.equal(first, second) and disable_dropout(model) == 0


def test_memory_options_train_the_same_run(small_task, tmp_path, cache_dir) -> None:
    """Chunked log-probs and gradient checkpointing change what is held in memory, not the result:
    the same steps, traces and final weights."""
    artifacts = small_task.artifacts
    common = dict(
        steps=3, trace_every=3, eval_pairs=artifacts.eval_pairs, eval_prompts=artifacts.eval_prompts, trace_prompts=4
    )  # fmt: skip
    runs = {}
    for name, options in {"plain": {}, "lean": {"logprob_chunk": 5, "gradient_checkpointing": True}}.items():
        sink = ListSink()
        result = train(make_spec(small_task, tmp_path / name, cache_dir, **common, **options), sink)
        weights = AutoModelForCausalLM.from_pretrained(result.final_model_dir).state_dict()
        runs[name] = ([r for r in sink.records if r["kind"] in ("step", "trace")], weights)
    (plain_records, plain_weights), (lean_records, lean_weights) = runs["plain"], runs["lean"]
    assert [r["kind"] for r in lean_records] == [r["kind"] for r in plain_records]
    for lean, plain in zip(lean_records, plain_records, strict=True):
        for key in ("loss", "rho_mean", "square_loss", "kl"):
            if key in plain:
                assert lean[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key
    # Chunks and recomputation add the same terms in another order; Adam's first steps move a weight
    # by about lr whatever its gradient's size, so for a weight whose gradient is near 0 that order
    # shows: up to 2.6e-5 on one weight of 4096 on a CPU without AVX-512 (lr 1e-3).
    for name, tensor in plain_weights.items():
        torch.testing.assert_close(lean_weights[name], tensor, rtol=1e-4, atol=5e-5)


def test_bf16_pure_keeps_weights_gradients_and_adam_moments_in_bf16(small_task, tmp_path, cache_dir) -> None:
    spec = make_spec(small_task, tmp_path, cache_dir, precision="bf16-pure", steps=2, checkpoint_every=1)
    sink = ListSink()
    result = train(spec, sink)
    steps = [r for r in sink.records if r["kind"] == "step"]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in steps)
    # The reference is read in bf16 too, so rho starts near 0 (bf16 rounding differs with the batch's
    # padding and the CPU's bf16 kernels: 2e-4 with AVX-512 BF16, 4e-3 without; an fp32 reference
    # against bf16 weights starts at 0.016).
    assert steps[0]["rho_mean"] == pytest.approx(0.0, abs=6e-3)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-0000001" / "trainer_state.pt", weights_only=True)
    moments = [m for s in state["optimizer"]["state"].values() for m in (s["exp_avg"], s["exp_avg_sq"])]
    assert moments and {m.dtype for m in moments} == {torch.bfloat16}
    final = AutoModelForCausalLM.from_pretrained(result.final_model_dir, dtype="auto")
    assert {p.dtype for p in final.parameters()} == {torch.bfloat16}
