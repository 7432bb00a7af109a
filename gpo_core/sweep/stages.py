"""The pipeline stages of a sweep as plain functions over a job folder, so the same code runs in
one process (``gpo run``) and inside the services (one stage per queue).

Each stage is idempotent: it writes its output atomically and returns early when the output is
already there, so a redelivered task costs nothing and never duplicates anything. Layout::

    JOB/identity.json                  what the results are computed from (spec, inputs' content)
    JOB/job.json                       the spec and its run ids
    JOB/reference/responses.jsonl      the reference policy's samples (shared by every run)
    JOB/runs/RUN/train/                training output: metrics.jsonl, checkpoints/, final/
    JOB/runs/RUN/train.json            training result (written last: the stage's marker)
    JOB/runs/RUN/responses.jsonl       the run's samples
    JOB/runs/RUN/judgement.json        the run against the reference (+ verdicts.jsonl)
    JOB/pairwise.json                  all runs at one beta against each other (Fig. 9)
    JOB/judge_eval.json                the judge's own accuracy on judge.evaluate_on
    JOB/report/                        report.html, report.json, figures
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from gpo_core.cache import cache_root
from gpo_core.data import load_preferences, load_prompts, write_json, write_jsonl
from gpo_core.generate import SamplingSettings, VLLMEngine, cached_responses, generate_responses, load_responses
from gpo_core.identity import DifferentSpec, claim, content_digest, flatten
from gpo_core.inputs import named_paths
from gpo_core.judging.comparison import Judge, pair_responses
from gpo_core.judging.settings import JudgeSettings
from gpo_core.remote import is_uri, materialize
from gpo_core.stopping import StopCheck, check
from gpo_core.sweep.pipeline import REFERENCE, Outcome, marker, run_dir
from gpo_core.sweep.spec import JobSpec, RunSpec
from gpo_core.train.metrics import MetricsSink
from gpo_core.train.run import TrainingError
from gpo_core.train.spec import TrainingSpec

IDENTITY = "identity.json"
# Spec fields added after job folders first recorded their identity, with their defaults: left out of
# the identity of a spec that leaves them at their defaults, so a job folder written before them
# resumes after an upgrade instead of being refused as another spec's.
LATER_FIELDS: dict[str, object] = {"online": None, "judge.reward": "gold", "online.eval_prompts": 0}
OFFLINE_BUDGET = "offline-budget.jsonl"  # in JOB/: an online job's offline baseline's share of the dataset


class TrainingDiverged(TrainingError):
    """A later stage was asked for a run whose training diverged (permanent: no retry helps)."""


@dataclass(frozen=True)
class Inputs:
    """Where a job's models and data are, once the built-in task (if any) is built."""

    policy: str
    reference: str
    dataset: str
    eval_pairs: str | None
    eval_prompts: str
    task_root: str | None


def resolve_inputs(
    spec: JobSpec, progress: Callable[[str], None] | None = None, should_stop: StopCheck | None = None
) -> Inputs:
    """Builds the built-in task when the spec asks for it (cached by content: instant when built;
    a build stops when ``should_stop`` says so)."""
    if spec.task is not None:
        from gpo_core.task.build import LabelProxy, build_task, task_settings

        proxy = LabelProxy(spec.task.label_length_bonus, spec.task.label_flip_rate)
        settings = task_settings(spec.task.size, spec.task.seed, spec.task.architecture, proxy=proxy)
        artifacts = build_task(None, settings, progress=progress, should_stop=should_stop)
        return Inputs(
            policy=artifacts.model_dir,
            reference=artifacts.model_dir,
            dataset=artifacts.train_pairs,
            eval_pairs=artifacts.eval_pairs,
            eval_prompts=artifacts.eval_prompts,
            task_root=artifacts.root,
        )
    # JobSpec's validator requires these when there is no built-in task.
    assert spec.policy is not None and spec.dataset is not None and spec.eval_prompts is not None
    return Inputs(
        policy=local_copy(spec.policy),
        reference=local_copy(spec.reference or spec.policy),
        dataset=local_copy(spec.dataset),
        eval_pairs=local_copy(spec.eval_pairs),
        eval_prompts=local_copy(spec.eval_prompts),
        task_root=None,
    )


@overload
def local_copy(path: str) -> str: ...
@overload
def local_copy(path: None) -> None: ...
def local_copy(path: str | None) -> str | None:
    """``path`` itself, or for an object-store URI its copy in the cache (fetched when it changed)."""
    if path is None or not is_uri(path):
        return path
    return str(materialize(path, cache_root()))


def run_by_id(spec: JobSpec, run: str) -> RunSpec:
    return spec.run(run)


def job_identity(spec: JobSpec) -> dict:
    """Everything that determines a sweep's results: its spec, and the content of every local
    input it names (an object-store input is named by its URI; each training run checks the
    content of its local copy itself). Left out: what changes how, not what, is computed (the
    name, how many comparisons are in flight, the judge's preflight probe)."""
    identity = flatten(spec.model_dump(mode="json", exclude={"name": True, "judge": {"probe", "concurrency"}}))
    for name, default in LATER_FIELDS.items():  # a spec that does not use them: its identity of before
        if identity.get(name, default) == default:
            identity.pop(name, None)
    identity["runs"] = [{k: v for k, v in run.items() if (k, v) != ("mode", "offline")} for run in identity["runs"]]
    for name, path in named_paths(spec).items():
        if path is not None and not is_uri(path):
            try:
                identity[f"{name}.content"] = content_digest(path)
            except OSError as err:
                raise FileNotFoundError(f"{name}: cannot read {path} ({err.strerror or err})") from None
    return identity


def write_job_file(spec: JobSpec, job_dir: Path) -> None:
    """Tie ``job_dir`` to this spec (its identity in ``identity.json``), so that running the same
    spec again resumes it and any other spec is refused with the changes named, never mixed with
    this one's results."""
    hint = "give another job folder (--out), or delete this one to start over"
    if not (job_dir / IDENTITY).exists() and (job_dir / "runs").exists():
        raise DifferentSpec(f"{job_dir} holds a sweep with no record of its spec ({IDENTITY}); {hint}")
    claim(job_dir / IDENTITY, job_identity(spec), "sweep", hint)
    write_json(job_dir / "job.json", {"spec": spec.model_dump(mode="json"), "runs": spec.run_ids()})


def training_spec(
    spec: JobSpec, inputs: Inputs, job_dir: Path, run: str, cache_dir: Path | None = None
) -> TrainingSpec:
    """The training spec of ``run``; ``cache_dir``: the reference log-prob cache it shares (default
    the cache root; the services give each tenant its own)."""
    settings = spec.training.model_dump(exclude={"beta_units"})
    target = run_by_id(spec, run)
    if target.seed is not None:
        settings["seed"] = target.seed
    beta = {"beta_ipo": target.beta} if spec.training.beta_units == "ipo" else {"beta": target.beta}
    if not (inputs.eval_pairs or inputs.eval_prompts):
        settings["trace_every"] = 0  # nothing to trace on
    dataset = inputs.dataset
    if spec.online is not None and target.mode == "offline":  # the online runs' offline baseline
        dataset = str(offline_budget(spec, inputs, job_dir))
    return TrainingSpec(
        policy=inputs.policy,
        reference=inputs.reference,
        dataset=dataset,
        eval_pairs=inputs.eval_pairs,
        eval_prompts=inputs.eval_prompts,
        output_dir=str(run_dir(job_dir, run) / "train"),
        dataset_split=spec.dataset_split,
        dataset_columns=spec.dataset_columns,
        chat_template=spec.chat_template,
        loss=target.loss,
        cache_dir=None if cache_dir is None else str(cache_dir),
        **settings,
        **beta,
    )


def offline_budget(spec: JobSpec, inputs: Inputs, job_dir: Path) -> Path:
    """The offline baseline's pairs: as many of the dataset's as an online run judges, drawn once
    (a fixed shuffle), written to the job folder."""
    assert spec.online is not None
    out = job_dir / OFFLINE_BUDGET
    if out.exists():
        return out
    pairs = load_preferences(inputs.dataset, columns=spec.dataset_columns, split=spec.dataset_split)
    random.Random(0).shuffle(pairs)
    return write_jsonl(out, pairs[: spec.online.judged_pairs])


def train_stage(
    spec: JobSpec,
    job_dir: Path,
    run: str,
    sink: MetricsSink | None = None,
    stop_requested: StopCheck | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Train one run (resuming from its last checkpoint), its reference log-probs shared through
    ``cache_dir`` (see :func:`training_spec`). Returns the result; ``stopped`` is true
    when a stop was requested, and then no result file is written (the run is not done).
    ``diverged`` says why a run ended on a non-finite loss: it is done, with no model to sample,
    and the sweep goes on without it."""
    from gpo_core.train.launch import run_training

    done = marker(job_dir, run, "train")
    if done.exists():
        return json.loads(done.read_text())
    inputs = resolve_inputs(spec, should_stop=stop_requested)
    if spec.rounds(spec.run(run)):  # an online run's start: no pairs yet (its rounds train it)
        return {"steps": 0, "stopped": False, "diverged": None}
    training = training_spec(spec, inputs, job_dir, run, cache_dir)
    result = run_training(training, sink, stop_requested or (lambda: False))
    summary = {
        "steps": result.steps,
        # relative to the run's folder: records a tenant downloads carry no server paths
        "final_model_dir": os.path.relpath(result.final_model_dir, run_dir(job_dir, run))
        if result.final_model_dir
        else None,
        "stopped": result.stopped,
        "diverged": result.diverged,
        "reference_cache": result.reference_cache,
        "last_metrics": result.last_metrics,
    }
    if not result.stopped:
        write_json(done, summary)
    return summary


def training_outcome(result: dict) -> tuple[Outcome, dict]:
    """How a finished training stage (:func:`train_stage`, not stopped) ended, and what the run
    records of it: its steps, and why when it diverged."""
    step = result.get("run_step", result["steps"])  # an online round's: the run's step, counted across rounds
    if result.get("diverged"):  # over, with no model: the sweep goes on without this run
        return "diverged", {"step": step, "reason": result["diverged"]}
    return "done", {"step": step}


def sampling_settings(spec: JobSpec, run: str = REFERENCE) -> SamplingSettings:
    """How ``run`` (or the reference policy) is sampled: the spec's ``generation``, with the
    sampled model's own seed (:func:`sampling_seed`)."""
    g = spec.generation
    return SamplingSettings(
        temperature=g.temperature,
        top_p=g.top_p,
        max_new_tokens=g.max_new_tokens,
        n=g.n,
        seed=sampling_seed(g.seed, run),
        chat_template=spec.chat_template,
    )


def sampling_seed(seed: int, run: str) -> int:
    """The sampling seed of ``run`` in a sweep whose ``generation.seed`` is ``seed``: ``seed``
    itself for the reference policy (so its cached samples serve every sweep), and for each run
    one of its own, drawn from ``seed`` and the run's id (below 2**32).

    Why not one seed for all: sampled with the same seed, a run draws the same random numbers at
    each prompt as the reference and as every other run, so a policy near another answers as it
    does. That couples the two responses a win rate compares, whose definition draws them
    independently (measured in docs/evaluation.md, "Generation"); and it gives the seeds of a cell
    one shared draw, which keeps the sampling noise out of the seed-to-seed variance that C1's and
    C2's tests weigh the losses against."""
    if run == REFERENCE:
        return seed
    digest = hashlib.blake2b(f"{seed}/{run}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def lora_rank(spec: JobSpec) -> int | None:
    """The rank of the sweep's LoRA adapters when its runs are sampled unmerged (the generation
    engine sizes its LoRA slots by it), else None (``generation.lora_serving``)."""
    if spec.training.lora is None:
        return None
    serving = spec.generation.lora_serving
    if serving == "auto":
        import torch

        serving = "unmerged" if torch.cuda.is_available() else "merged"
    return spec.training.lora.r if serving == "unmerged" else None


def evaluation_prompts(spec: JobSpec, inputs: Inputs) -> list[dict]:
    prompts = load_prompts(inputs.eval_prompts)
    return prompts[: spec.generation.prompts] if spec.generation.prompts else prompts


def generate_stage(
    spec: JobSpec,
    job_dir: Path,
    run: str,
    cache_dir: Path,
    engine: VLLMEngine | None = None,
    should_stop: StopCheck | None = None,
    backend: str | None = None,
) -> Path:
    """Sample ``run``'s final model (or the reference policy) on the evaluation prompts. The
    reference's samples come from the content-keyed cache, so a sweep (or many) makes them once.
    ``backend``: the one the caller settled on (:func:`gpo_core.generate.start_engine`), else the
    spec's."""
    out = marker(job_dir, run, "generate")
    if out.exists():
        return out
    inputs = resolve_inputs(spec, should_stop=should_stop)
    prompts = evaluation_prompts(spec, inputs)
    settings = sampling_settings(spec, run)
    backend = backend or spec.generation.backend
    if run == REFERENCE:
        cached, _ = cached_responses(
            inputs.reference, prompts, settings, cache_dir, backend, engine, REFERENCE, should_stop
        )
        return write_jsonl(out, load_responses(cached))  # atomic, even with two generators at once
    trained = marker(job_dir, run, "train")
    if not trained.exists():
        raise FileNotFoundError(f"run {run} has no trained model yet ({trained} is missing)")
    result = json.loads(trained.read_text())
    if result.get("diverged"):
        raise TrainingDiverged(f"run {run} diverged in training ({result['diverged']}): it has no model to sample")
    # None: an online run none of whose rounds had a pair to train on still holds the job's policy
    final = result["final_model_dir"]
    model_dir = Path(inputs.policy) if final is None else run_dir(job_dir, run) / final
    unmerged = lora_rank(spec) is not None
    records = generate_responses(model_dir, prompts, settings, run, backend, engine, should_stop, unmerged)
    return write_jsonl(out, records)


def make_judge(
    spec: JobSpec, inputs: Inputs, api_key: str | None = None, settings: JudgeSettings | None = None
) -> Judge:
    """The judge of ``spec`` (or ``settings``: an online job's annotator)
    (:func:`gpo_core.judging.factory.build_judge`), with this job's inputs:
    the built-in task, the local judge's copy here, and its evaluation prompts' kind. Whose
    ``api_key`` an endpoint judge sends is the caller's to decide (the services' worker:
    :mod:`gpo_services.common.credentials`; the embedded runner: :func:`embedded_api_key`)."""
    from gpo_core.conversation import is_conversation
    from gpo_core.judging.factory import build_judge

    settings = settings or spec.judge
    model_dir = local_copy(settings.model_dir)
    return build_judge(
        settings,
        api_key=api_key,
        task_root=None if inputs.task_root is None else Path(inputs.task_root),
        model_dir=None if model_dir is None else Path(model_dir),
        conversational=lambda: is_conversation(load_prompts(inputs.eval_prompts)[0]["prompt"]),
    )


def embedded_api_key(spec: JobSpec, field: str = "judge") -> str | None:
    """An endpoint judge's key in an embedded run (your own machine): your variable
    ``api_key_env`` of the judge at ``field`` (:meth:`JobSpec.judges`), default OPENAI_API_KEY."""
    judge = spec.judges()[field]
    if not judge.calls_endpoint:
        return None
    return os.environ.get(judge.api_key_env or "OPENAI_API_KEY")


def _judge(
    spec: JobSpec, inputs: Inputs, job_dir: Path, items: list[dict], should_stop: StopCheck | None, api_key: str | None
):
    from gpo_core.judging.comparison import VerdictCache, side_by_side

    judge = make_judge(spec, inputs, api_key)
    cache = VerdictCache(job_dir / "verdicts.jsonl")
    settings = spec.judge
    # Many comparisons in flight only where each waits on the network: the oracle and a local
    # model compute (and the sampled oracle draws from one generator, in order).
    concurrency = settings.concurrency if settings.calls_endpoint else 1
    result = side_by_side(
        judge, items, cache=cache, retries=settings.retries, should_stop=should_stop, concurrency=concurrency
    )
    return result, judge


def judge_stage(
    spec: JobSpec, job_dir: Path, run: str, should_stop: StopCheck | None = None, api_key: str | None = None
) -> dict:
    """``run``'s responses against the reference's, both orders; the summary goes to
    ``judgement.json`` and the per-comparison records beside it."""
    out = marker(job_dir, run, "judge")
    if out.exists():
        return json.loads(out.read_text())
    inputs = resolve_inputs(spec, should_stop=should_stop)
    ours = load_responses(marker(job_dir, run, "generate"))
    theirs = load_responses(marker(job_dir, REFERENCE, "generate"))
    items = pair_responses(ours, theirs)
    result, judge = _judge(spec, inputs, job_dir, items, should_stop, api_key)
    summary = {"run": run, "against": REFERENCE, "judge": judge.key, **result.to_dict()}
    if inputs.task_root is not None:  # the built-in task knows the true reward: report it too
        from gpo_core.task.build import BuiltTask

        task = BuiltTask(inputs.task_root)
        summary["mean_gold_reward"] = {
            "a": sum(task.reward(i["prompt"], i["a"]) for i in items) / max(1, len(items)),
            "b": sum(task.reward(i["prompt"], i["b"]) for i in items) / max(1, len(items)),
        }
    write_jsonl(out.with_name("verdicts.jsonl"), result.records)
    write_json(out, summary)
    return summary


def judge_eval_stage(
    spec: JobSpec, job_dir: Path, should_stop: StopCheck | None = None, api_key: str | None = None
) -> dict | None:
    """The judge's own accuracy on ``judge.evaluate_on`` (labelled pairs), once per job, in
    ``JOB/judge_eval.json`` (see :mod:`gpo_core.judge_eval`)."""
    from gpo_core.data import load_preferences
    from gpo_core.judging.comparison import VerdictCache
    from gpo_core.judging.evaluation import evaluate_judge

    out = job_dir / "judge_eval.json"
    evaluate_on = spec.judge.evaluate_on
    if evaluate_on is None:
        return None
    if out.exists():
        return json.loads(out.read_text())
    check(should_stop)
    inputs = resolve_inputs(spec, should_stop=should_stop)
    pairs = load_preferences(local_copy(evaluate_on))
    concurrency = spec.judge.concurrency if spec.judge.calls_endpoint else 1
    cache = VerdictCache(job_dir / "verdicts.jsonl")
    figures = evaluate_judge(make_judge(spec, inputs, api_key), pairs, cache, spec.judge.retries, concurrency)
    write_json(out, figures)
    return figures


def diverged(job_dir: Path, run: str) -> str | None:
    """Why ``run`` diverged in training, or None (not diverged, or not trained yet)."""
    trained = marker(job_dir, run, "train")
    return json.loads(trained.read_text()).get("diverged") if trained.exists() else None


def pairwise_runs(spec: JobSpec, job_dir: Path) -> list[str]:
    """The runs at ``comparisons.pairwise_beta``, one per loss (its first seed), less those that
    diverged (nothing to compare)."""
    beta = spec.comparisons.pairwise_beta
    first: dict[str, str] = {}
    for rid, run in zip(spec.run_ids(), spec.run_list(), strict=True):
        if run.beta == beta:
            first.setdefault(run.loss, rid)
    return [run for run in first.values() if not diverged(job_dir, run)]


def pairwise_stage(
    spec: JobSpec, job_dir: Path, should_stop: StopCheck | None = None, api_key: str | None = None
) -> dict | None:
    """Every pair of runs at ``comparisons.pairwise_beta`` side by side (both orders), the win-rate
    matrix and Bradley-Terry strengths with bootstrap intervals (Fig. 9)."""
    from gpo_core.stats import bradley_terry_strengths

    out = job_dir / "pairwise.json"
    if spec.comparisons.pairwise_beta is None:
        return None
    if out.exists():
        return json.loads(out.read_text())
    inputs = resolve_inputs(spec, should_stop=should_stop)
    runs = pairwise_runs(spec, job_dir)
    responses = [load_responses(marker(job_dir, run, "generate")) for run in runs]
    matrix: list[list[float | None]] = [[None] * len(runs) for _ in runs]
    comparisons = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            items = pair_responses(responses[i], responses[j])
            result, _ = _judge(spec, inputs, job_dir, items, should_stop, api_key)
            if result.win_rate is not None:
                matrix[i][j] = result.win_rate.rate
                matrix[j][i] = 1 - result.win_rate.rate
            comparisons += [(r["prompt_id"], i, j, r["outcome"]) for r in result.records if r["outcome"] != "invalid"]
    strengths = bradley_terry_strengths(runs, comparisons) if comparisons else None
    summary = {
        "beta": spec.comparisons.pairwise_beta,
        "runs": runs,
        "losses": [run_by_id(spec, run).loss for run in runs],
        "win_rate": matrix,  # win_rate[i][j]: run i over run j
        "bradley_terry": strengths.to_dict() if strengths else None,
    }
    write_json(out, summary)
    return summary


def finish_stage(
    spec: JobSpec,
    job_dir: Path,
    should_stop: StopCheck | None = None,
    api_key: str | None = None,
    progress: Callable[[str, str], None] = lambda step, state: None,
) -> Path:
    """The job's finishing step (:data:`gpo_core.sweep.pipeline.FINISH`), once every run is over:
    the judge's own accuracy, the pairwise comparisons (each when the spec asks for it) and the
    report; the report page's path. ``progress(step, state)`` hears each part start and end."""
    from gpo_core.sweep.report import build_report

    if spec.judge.evaluate_on is not None:
        progress("judge-eval", "running")
        judge_eval_stage(spec, job_dir, should_stop, api_key)
        progress("judge-eval", "done")
    if spec.comparisons.pairwise_beta is not None:
        progress("pairwise", "running")
        pairwise_stage(spec, job_dir, should_stop, api_key)
        progress("pairwise", "done")
    return build_report(job_dir)
