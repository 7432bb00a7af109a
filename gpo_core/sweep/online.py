"""An online run's rounds (``JobSpec.online``) as stages over its job folder, like the offline
stages in :mod:`gpo_core.sweep.stages` and run by the same services: the generator samples two
responses per prompt from the current policy, the judge service has the annotator label each pair,
the trainer takes GPO steps on the fresh pairs against the fixed pi_ref. Layout, per round R::

    JOB/runs/RUN/rounds/R/eval-samples.jsonl  with online.eval_prompts: one response per evaluation prompt
    JOB/runs/RUN/rounds/R/samples.jsonl   the policy's two responses per prompt (generate)
    JOB/runs/RUN/rounds/R/pairs.jsonl     the pairs the annotator decided, chosen first
    JOB/runs/RUN/rounds/R/labels.json     what labelling found (judge; the stage's marker)
    JOB/runs/RUN/rounds/R/train/          the round's training: metrics.jsonl, checkpoints/, final/
    JOB/runs/RUN/rounds/R/train.json      the round's training result (train; the marker)

After the last round the run's own ``train.json`` names the last round's model, and the run is
sampled and judged against the reference as an offline run is. Each stage is idempotent (its marker
is written last), so a killed worker's task, redelivered, resumes: sampling and labelling are
redone only where their marker is missing (the annotator's verdicts are cached in the job's
verdicts.jsonl: nothing is judged twice), training resumes from the round's last checkpoint.

Each round's training starts from the previous round's final model with a fresh optimizer (the
pairs of a round are new data; Guo et al. keep one optimizer, which a round-by-round service that
moves the model through files does not). The reference log-probs of a round's pairs are computed
once, by its training, into the shared content-keyed cache."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from gpo_core.data import load_preferences, write_json, write_jsonl
from gpo_core.generate import VLLMEngine, generate_responses, load_responses
from gpo_core.judging.comparison import SideBySide, VerdictCache, pair_responses, side_by_side
from gpo_core.models import FINAL_ADAPTER, is_adapter
from gpo_core.stopping import StopCheck
from gpo_core.sweep.pipeline import REFERENCE, marker, round_dir, run_dir
from gpo_core.sweep.spec import JobSpec
from gpo_core.sweep.stages import (
    Inputs,
    lora_rank,
    make_judge,
    resolve_inputs,
    run_by_id,
    sampling_seed,
    sampling_settings,
    training_spec,
)
from gpo_core.train.metrics import MetricsSink
from gpo_core.train.spec import TrainingSpec

DECIDED = ("win", "loss")  # a verdict that held in both orders
EVAL_SAMPLES = "eval-samples.jsonl"  # a round's policy on the evaluation prompts (online.eval_prompts)


def annotator_field(spec: JobSpec) -> str:
    """Where the annotator is in the spec: ``online.annotator``, or ``judge`` when it is the job's judge."""
    return "online.annotator" if spec.online is not None and spec.online.annotator is not None else "judge"


def _prompt_key(prompt: object) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def training_prompts(spec: JobSpec, inputs: Inputs) -> list[dict]:
    """The dataset's distinct prompts, in their first order, as sampling records (``id``,
    ``prompt``): what an online run samples from."""
    seen: dict[str, dict] = {}
    for pair in load_preferences(inputs.dataset, columns=spec.dataset_columns, split=spec.dataset_split):
        key = _prompt_key(pair["prompt"])
        if key not in seen:
            seen[key] = {"id": f"p{len(seen)}", "prompt": pair["prompt"]}
    return list(seen.values())


def round_prompts(spec: JobSpec, inputs: Inputs, run: str, round: int) -> list[dict]:
    """Round ``round``'s prompts: the dataset's distinct prompts shuffled once by the run's seed,
    taken ``prompts_per_round`` at a time (from the start again when they run out)."""
    assert spec.online is not None
    prompts = training_prompts(spec, inputs)
    seed = run_by_id(spec, run).seed
    random.Random(spec.training.seed if seed is None else seed).shuffle(prompts)
    size = spec.online.prompts_per_round
    return [prompts[(round * size + k) % len(prompts)] for k in range(min(size, len(prompts)))]


def round_model(spec: JobSpec, job_dir: Path, run: str, round: int, inputs: Inputs | None = None) -> Path:
    """The model round ``round`` samples from and trains further: the job's policy at round 0,
    else the model the previous round ended with."""
    if round == 0:
        return Path((inputs or resolve_inputs(spec)).policy)
    previous = json.loads(marker(job_dir, run, "train", round - 1).read_text())
    if previous["model"] is None:  # no round has trained yet
        return Path((inputs or resolve_inputs(spec)).policy)
    return run_dir(job_dir, run) / previous["model"]


def round_start(spec: JobSpec, job_dir: Path, run: str, round: int, inputs: Inputs | None = None) -> Path:
    """What round ``round``'s training starts from: :func:`round_model`, or for a LoRA job after
    its first trained round, that model's adapters alone (``final/adapter``). Each round then trains
    the same adapters further on the job's base, so every round's adapters go on the weights the
    generation engine already serves and are hot-loaded there, not merged and reloaded."""
    model = round_model(spec, job_dir, run, round, inputs)
    adapter = model / FINAL_ADAPTER
    if spec.training.lora is not None and round > 0 and is_adapter(adapter):
        return adapter
    return model


def engine_restart_note(spec: JobSpec, engine: VLLMEngine | None) -> str | None:
    """What an online job on a vLLM engine that cannot take new weights in place (CPUs) should
    know: each round's checkpoint restarts the engine (seconds a round, whatever its size), where
    transformers only loads the checkpoint. None where it does not apply (no rounds, a GPU, LoRA
    adapters hot-loaded, or transformers)."""
    if spec.online is None or engine is None or engine.reloads_in_place or lora_rank(spec) is not None:
        return None
    return (
        "each online round's checkpoint restarts the vLLM engine on CPUs (a few seconds a round); for a small "
        "model, generation.backend: transformers samples a round faster"
    )


def sample_round(
    spec: JobSpec,
    job_dir: Path,
    run: str,
    round: int,
    engine: VLLMEngine | None = None,
    should_stop: StopCheck | None = None,
    backend: str | None = None,
) -> Path:
    """Two responses per prompt of the round, from the current policy (the sampling settings of
    ``generation``, its seed moved on by the round: every run of the round draws the same random
    numbers, as every run of a seed sees the same data order), and, where ``online.eval_prompts``
    asks, one on those prompts with the run's own seed (:func:`sampling_seed`)."""
    out = marker(job_dir, run, "generate", round)
    if out.exists():
        return out
    inputs = resolve_inputs(spec, should_stop=should_stop)
    prompts = round_prompts(spec, inputs, run, round)
    settings = replace(sampling_settings(spec), n=2, seed=spec.generation.seed + round)
    model = round_model(spec, job_dir, run, round, inputs)
    unmerged, backend = lora_rank(spec) is not None, backend or spec.generation.backend
    evaluation = out.with_name(EVAL_SAMPLES)
    judged_on = round_eval_prompts(spec, job_dir) if not evaluation.exists() else []
    if judged_on and Path(model) != Path(inputs.reference):  # pi_ref against itself would only tie
        once = replace(settings, n=1, seed=sampling_seed(settings.seed, run))  # not another run's draws
        write_jsonl(evaluation, generate_responses(model, judged_on, once, run, backend, engine, should_stop, unmerged))
    records = generate_responses(model, prompts, settings, run, backend, engine, should_stop, unmerged)
    return write_jsonl(out, records)


def round_eval_prompts(spec: JobSpec, job_dir: Path) -> list[dict]:
    """The evaluation prompts each round's policy is judged on against the reference: the first
    ``online.eval_prompts`` the reference answered (its first sample of each)."""
    assert spec.online is not None
    if not spec.online.eval_prompts:
        return []
    reference = load_responses(marker(job_dir, REFERENCE, "generate"))
    first = [{"id": r["prompt_id"], "prompt": r["prompt"]} for r in reference if r.get("sample", 0) == 0]
    return first[: spec.online.eval_prompts]


def label_round(
    spec: JobSpec,
    job_dir: Path,
    run: str,
    round: int,
    should_stop: StopCheck | None = None,
    api_keys: Mapping[str, str | None] | None = None,
) -> dict:
    """The annotator on each pair of the round's samples, both orders: a verdict that holds in both
    is a pair (chosen, rejected); a tie, a flip with the order, no verdict or an empty response
    gives none. Where the
    annotator is not the job's judge, the judge decides the same pairs too: the labels' agreement
    with the evaluation judge. ``api_keys``: each endpoint judge's key, by its field
    (:meth:`JobSpec.judges`)."""
    out = marker(job_dir, run, "judge", round)
    if out.exists():
        return json.loads(out.read_text())
    inputs = resolve_inputs(spec, should_stop=should_stop)
    samples = load_responses(marker(job_dir, run, "generate", round))
    second = {r["prompt_id"]: r["response"] for r in samples if r["sample"] == 1}
    items = [
        {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "a": r["response"], "b": second[r["prompt_id"]]}
        for r in samples
        if r["sample"] == 0 and r["prompt_id"] in second
    ]
    cache = VerdictCache(job_dir / "verdicts.jsonl")

    keys = api_keys or {}

    def decide(field: str, items: list[dict]) -> SideBySide:
        settings = spec.judges()[field]
        judge = make_judge(spec, inputs, keys.get(field), settings)
        concurrency = settings.concurrency if settings.calls_endpoint else 1
        return side_by_side(
            judge, items, cache=cache, retries=settings.retries, should_stop=should_stop, concurrency=concurrency
        )

    labelled = decide(annotator_field(spec), items)
    records, calls = labelled.records, labelled.judge_calls
    pairs, empty = [], 0
    for item, record in zip(items, records, strict=True):
        if record["outcome"] in DECIDED and not (item["a"].strip() and item["b"].strip()):
            empty += 1  # decided, but a pair's responses are texts to train on: an empty one gives none
        elif record["outcome"] in DECIDED:
            chosen, rejected = (item["a"], item["b"]) if record["outcome"] == "win" else (item["b"], item["a"])
            pairs.append(
                {"prompt_id": item["prompt_id"], "prompt": item["prompt"], "chosen": chosen, "rejected": rejected}
            )
    agreement = None
    if annotator_field(spec) != "judge" and pairs:
        judged = decide("judge", items).records
        both = [(r["outcome"], j["outcome"]) for r, j in zip(records, judged, strict=True) if r["outcome"] in DECIDED]
        agreement = sum(ours == theirs for ours, theirs in both) / len(both)
    evaluation, win_rate = out.with_name(EVAL_SAMPLES), None
    if evaluation.exists():  # the round's policy against the reference, by the job's judge
        against = pair_responses(load_responses(evaluation), load_responses(marker(job_dir, REFERENCE, "generate")))
        rated = decide("judge", against).win_rate
        win_rate = None if rated is None else rated.to_dict()
    summary = {
        "round": round,
        "prompts": len(items),
        "pairs": len(pairs),
        "ties": sum(r["outcome"] == "tie" for r in records),
        "flipped": sum(r["flipped"] for r in records),
        "invalid": sum(r["outcome"] == "invalid" for r in records),
        "empty": empty,  # decided, with an empty response: no pair
        "annotator_calls": calls,
        "agreement_with_judge": agreement,  # None: the annotator is the judge (or no pair)
        "win_rate_vs_reference": win_rate,  # None: no online.eval_prompts (or no verdict)
        "mean_length": sum(len(str(r["response"]).split()) for r in samples) / max(1, len(samples)),
    }
    if inputs.task_root is not None:  # the built-in task knows the true reward of the policy's samples
        from gpo_core.task.build import BuiltTask

        task = BuiltTask(inputs.task_root)
        summary["mean_gold_reward"] = sum(task.reward(r["prompt"], r["response"]) for r in samples) / max(
            1, len(samples)
        )
    write_jsonl(out.with_name("pairs.jsonl"), pairs)
    write_json(out, summary)
    return summary


class _RoundSink:
    """A round's training records as the run's: steps counted from the run's start."""

    def __init__(self, sink: MetricsSink, offset: int, total: int):
        self.sink, self.offset, self.total = sink, offset, total

    def emit(self, record: dict) -> None:
        if "step" in record:
            record = {**record, "step": record["step"] + self.offset, "steps": self.total}
        self.sink.emit(record)

    def close(self) -> None:
        self.sink.close()


def round_training_spec(
    spec: JobSpec, inputs: Inputs, job_dir: Path, run: str, round: int, cache_dir: Path | None = None
) -> TrainingSpec:
    """Round ``round``'s training: the run's settings, from the previous round's model on this
    round's pairs for ``steps_per_round`` steps (warm-up in the first round only; a KL trace at the
    round's end when the job traces, and at round 0's start). pi_ref stays the job's reference."""
    assert spec.online is not None
    base = training_spec(spec, inputs, job_dir, run, cache_dir).model_dump()
    steps = spec.online.steps_per_round
    start = round_start(spec, job_dir, run, round, inputs)
    base.update(
        policy=str(start),
        lora=None if is_adapter(start) else base["lora"],  # an adapter is trained further as it is
        dataset=str(marker(job_dir, run, "judge", round).with_name("pairs.jsonl")),
        dataset_split="train",
        dataset_columns={},
        output_dir=str(round_dir(job_dir, run, round) / "train"),
        steps=steps,
        epochs=None,
        seed=base["seed"] + round,
        warmup_steps=min(base["warmup_steps"], steps) if round == 0 else 0,
        trace_every=steps if base["trace_every"] else 0,
        trace_at_start=round == 0,  # a later round starts from the model the previous round traced at its end
        checkpoint_every=min(base["checkpoint_every"], steps) if base["checkpoint_every"] else 0,
    )
    return TrainingSpec(**base)


def train_round(
    spec: JobSpec,
    job_dir: Path,
    run: str,
    round: int,
    sink: MetricsSink | None = None,
    stop_requested: StopCheck | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """GPO steps on the round's pairs (resuming from the round's last checkpoint). A round whose
    pairs were all ties trains nothing and keeps the model. After the last round, the run's own
    ``train.json`` names the model it ended with (or why it diverged). Returns the round's result;
    ``stopped`` as :func:`gpo_core.sweep.stages.train_stage` has it."""
    from gpo_core.train.launch import run_training

    assert spec.online is not None
    done = marker(job_dir, run, "train", round)
    if done.exists():
        return json.loads(done.read_text())
    inputs = resolve_inputs(spec, should_stop=stop_requested)
    labels = json.loads(marker(job_dir, run, "judge", round).read_text())
    start = round_model(spec, job_dir, run, round, inputs)
    here = run_dir(job_dir, run)
    kept = os.path.relpath(start, here) if round > 0 and start.is_relative_to(here) else None
    summary: dict = {"round": round, "steps": 0, "model": kept, "stopped": False, "diverged": None}
    if labels["pairs"] == 0:
        summary["skipped"] = "no pairs: the annotator decided none of the round's comparisons"
    else:
        training = round_training_spec(spec, inputs, job_dir, run, round, cache_dir)
        offset, total = round * spec.online.steps_per_round, spec.online.steps
        round_sink = _RoundSink(sink, offset, total) if sink is not None else None
        result = run_training(training, round_sink, stop_requested or (lambda: False))
        if result.stopped:
            return {**summary, "stopped": True, "steps": result.steps}
        summary.update(
            steps=result.steps,
            diverged=result.diverged,
            model=None if result.final_model_dir is None else os.path.relpath(result.final_model_dir, here),
            reference_cache=result.reference_cache,
            last_metrics=result.last_metrics,
        )
    summary["run_step"] = round * spec.online.steps_per_round + summary["steps"]  # as the run's events count
    if summary["diverged"] or round + 1 == spec.online.rounds:
        _finish_run(spec, job_dir, run, round, summary)
    write_json(done, summary)
    return summary


def _finish_run(spec: JobSpec, job_dir: Path, run: str, round: int, last: dict) -> None:
    """The run's own training marker, as an offline run's: what its later stages sample."""
    assert spec.online is not None
    trained = [json.loads(marker(job_dir, run, "train", r).read_text())["steps"] for r in range(round)] + [
        last["steps"]
    ]
    write_json(
        marker(job_dir, run, "train"),
        {
            "steps": sum(trained),
            "final_model_dir": last["model"],  # None: no round trained, the job's policy is sampled
            "stopped": False,
            "diverged": last["diverged"],
            "rounds": round + 1,
            "last_metrics": last.get("last_metrics"),
        },
    )
