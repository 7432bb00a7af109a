"""What the preflight finds before any training, on the built-in task's model and tokenizer."""

import json

import pytest

from gpo_core.sweep.preflight import PreflightError, check_data, check_judge, preflight, probe_pairs
from gpo_core.sweep.spec import JobSpec
from gpo_core.sweep.stages import Inputs
from tests.support.json_server import Script, chat_completion, json_server


def test_data_the_tokenizer_cannot_read_is_refused_before_training(small_task, tmp_path) -> None:
    """Issue 29: every token of a user's English data was <unk> for the model's tokenizer; the
    job trained, judged and 'succeeded', and only "7 pairs dropped" hinted at it."""
    artifacts = small_task.artifacts
    english = tmp_path / "english.jsonl"
    record = {"prompt": "Summarize the meeting notes, please.", "chosen": "Budget approved; hiring frozen.",
              "rejected": "Nothing happened at all."}  # fmt: skip
    english.write_text("".join(json.dumps({**record, "prompt": f"{record['prompt']} ({i})"}) + "\n" for i in range(8)))
    spec = JobSpec(task={"size": "small"}, losses=["logistic"], betas=[0.1])

    def inputs(dataset: str) -> Inputs:
        return Inputs(policy=artifacts.model_dir, reference=artifacts.model_dir, dataset=dataset, eval_pairs=None,
                      eval_prompts=artifacts.eval_prompts, task_root=None)  # fmt: skip

    with pytest.raises(PreflightError, match=r"dataset: .*english.jsonl: \d+% of the tokens of its first 8 records"):
        check_data(spec, inputs(str(english)))
    pairs, prompts = check_data(spec, inputs(artifacts.train_pairs))  # the task's own data reads fine
    assert pairs and prompts


def _verdict_by_content(body: dict, number: int) -> tuple[int, dict, dict]:
    """A judge that reads: it prefers the response that says 'helpful'."""
    text = body["messages"][-1]["content"]
    first = text.split("Response A:")[1].split("Response B:")[0]
    return 200, {}, chat_completion("Verdict: A" if "helpful" in first else "Verdict: B")


def _verdict_by_length(body: dict, number: int) -> tuple[int, dict, dict]:
    """A judge that reads: it prefers the longer response."""
    first, rest = body["messages"][-1]["content"].split("Response A:")[1].split("Response B:")
    second = rest.split("The better response is")[0]
    return 200, {}, chat_completion("Verdict: A" if len(first) > len(second) else "Verdict: B")


def test_a_judge_that_cannot_tell_responses_apart_stops_the_job_before_training(small_task) -> None:
    """Issue 29: a 135M judge picked the first response whatever it said (position bias 1.00); the
    job trained for minutes and 'succeeded' with every win rate 0.500. The probe judges a few of the
    dataset's pairs in both orders first, and a judge that decides none of them stops the job."""
    artifacts = small_task.artifacts
    inputs = Inputs(policy=artifacts.model_dir, reference=artifacts.model_dir, dataset=artifacts.train_pairs,
                    eval_pairs=None, eval_prompts=artifacts.eval_prompts, task_root=None)  # fmt: skip
    probes = [(f"Question {i}?", f"A helpful answer {i}.", f"Something else {i}.") for i in range(4)]
    by_position = Script(lambda body, n: (200, {}, chat_completion("Verdict: A")))
    reading = Script(_verdict_by_content)
    with json_server(by_position) as blind_url, json_server(reading) as reading_url:

        def spec(url: str, probe: int = 4) -> JobSpec:
            judge = {"kind": "chat", "base_url": url, "model": "judge", "verdict": "rationale",
                     "template": "dialogue", "probe": probe}  # fmt: skip
            return JobSpec(task={"size": "small"}, losses=["logistic"], betas=[0.1], judge=judge)

        with pytest.raises(PreflightError) as caught:
            check_judge(spec(blind_url), inputs, probes)
        assert (
            "cannot tell responses apart: on 4 pairs of the dataset, each judged in both orders, it decided 0 of 4 "
            "pairs (0 as the data's labels, 0 against them); 4 by position alone, 0 tied" in str(caught.value)
        )
        assert "judge.probe: 0 to run anyway" in str(caught.value)
        assert len(by_position.bodies) == 8  # both orders of each pair

        result = check_judge(spec(reading_url), inputs, probes)
        assert (result.agreed, result.disagreed, result.by_position, result.ties) == (4, 0, 0, 0)

        # probe: 0 asks for one verdict only, which even the blind judge gives
        unprobed = spec(blind_url, probe=0)
        single = probe_pairs(unprobed, [], [{"prompt": "Question?"}])
        assert len(single) == 1 and check_judge(unprobed, inputs, single).pairs == 1


def test_an_online_jobs_annotator_that_cannot_tell_responses_apart_stops_the_job_before_training(small_task) -> None:
    """The annotator labels every round's pairs: one that decides nothing would leave the rounds
    with nothing to train on. The preflight probes it like the judge, with its own probe count."""
    artifacts = small_task.artifacts
    inputs = Inputs(policy=artifacts.model_dir, reference=artifacts.model_dir, dataset=artifacts.train_pairs,
                    eval_pairs=None, eval_prompts=artifacts.eval_prompts, task_root=None)  # fmt: skip
    by_position = Script(lambda body, n: (200, {}, chat_completion("Verdict: A")))
    reading = Script(_verdict_by_length)
    with json_server(by_position) as blind_url, json_server(reading) as reading_url:

        def chat(url: str, probe: int) -> dict:
            return {"kind": "chat", "base_url": url, "model": "judge", "verdict": "rationale", "template": "dialogue",
                    "probe": probe}  # fmt: skip

        spec = JobSpec(
            task={"size": "small"}, losses=["logistic"], betas=[0.1], judge=chat(reading_url, 4),
            online={"rounds": 2, "prompts_per_round": 8, "steps_per_round": 2, "annotator": chat(blind_url, 3)},
        )  # fmt: skip
        said: list[str] = []
        with pytest.raises(PreflightError) as caught:
            preflight(spec, inputs, said.append)
        message = str(caught.value)
        assert message.startswith(f"online.annotator: {blind_url} cannot tell responses apart: on 3 pairs")
        assert "Its rounds would have no pair to train on" in message and "online.annotator.probe: 0" in message
        assert (len(reading.bodies), len(by_position.bodies)) == (8, 6)  # each its own probe, both orders

        spec.online.annotator = chat(reading_url, 2)  # type: ignore[union-attr,assignment]
        spec = JobSpec.model_validate(spec.model_dump())
        preflight(spec, inputs, said.append)
        assert said[-1].startswith("preflight: data, tokenizer, judge and annotator checked; judge probe: decided")
        assert "; annotator probe: decided " in said[-1] and " of 2 pairs" in said[-1]


def test_the_probe_uses_the_datasets_pairs_whose_responses_differ() -> None:
    spec = JobSpec(task={"size": "small"}, losses=["logistic"], betas=[0.1], judge={"kind": "oracle", "probe": 2})
    pairs = [{"prompt": "p0", "chosen": "same", "rejected": "same"},
             {"prompt": "p1", "chosen": [{"role": "assistant", "content": "yes"}], "rejected": "no"},
             {"prompt": "p2", "chosen": "good", "rejected": "bad"},
             {"prompt": "p3", "chosen": "x", "rejected": "y"}]  # fmt: skip
    assert probe_pairs(spec, pairs, []) == [("p1", "yes", "no"), ("p2", "good", "bad")]
