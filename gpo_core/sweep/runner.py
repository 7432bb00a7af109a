"""The embedded runner: a whole sweep in this process, no Redis and no services (``gpo run``).

The stages are the services' stages, called in order: the reference's samples, then per run
train -> generate -> judge (a run that diverges in training stops there, recorded as such), then
the pairwise comparisons and the report. Every stage skips work
already on disk, so running the same spec into the same folder again resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpo_core.cache import cache_root
from gpo_core.generate import start_engine
from gpo_core.sweep import stages
from gpo_core.sweep.preflight import preflight
from gpo_core.sweep.report import build_report
from gpo_core.sweep.spec import JobSpec

Events = Callable[[dict], None]


class _RunSink:
    """Training records of one run, tagged with the run id, to the caller's event callback."""

    def __init__(self, run: str, events: Events):
        self.run, self.events = run, events

    def emit(self, record: dict) -> None:
        self.events({**record, "run": self.run})

    def close(self) -> None:
        pass


def run_job(
    spec: JobSpec,
    job_dir: str | Path,
    cache_dir: str | Path | None = None,
    events: Events | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> Path | None:
    """Run the sweep into ``job_dir``; returns the report's path, or None when stopped early."""
    job_dir = Path(job_dir)
    cache_dir = Path(cache_dir) if cache_dir else cache_root()
    emit = events or (lambda event: None)

    def stage(run: str, name: str, state: str, **extra) -> None:
        emit({"kind": "stage", "run": run, "stage": name, "state": state, **extra})

    stages.write_job_file(spec, job_dir)
    stage("job", "prepare", "running")
    inputs = stages.resolve_inputs(spec, progress=lambda message: emit({"kind": "log", "message": message}))
    stage("job", "prepare", "done")
    api_key = stages.embedded_api_key(spec)
    preflight(spec, inputs, lambda message: emit({"kind": "log", "message": message}), api_key=api_key)
    engine, note = start_engine(inputs.reference, spec.generation.backend, stages.lora_rank(spec))
    if note:
        emit({"kind": "log", "message": note})
    backend = "vllm" if engine is not None else "transformers"
    try:
        stage(stages.REFERENCE, "generate", "running")
        stages.generate_stage(spec, job_dir, stages.REFERENCE, cache_dir, engine, backend=backend)
        stage(stages.REFERENCE, "generate", "done")
        for run in spec.run_ids():
            stage(run, "train", "running")
            result = stages.train_stage(spec, job_dir, run, _RunSink(run, emit), stop_requested)
            if result["stopped"]:
                stage(run, "train", "stopped", step=result["steps"])
                return None
            if result.get("diverged"):  # recorded, not fatal: the sweep goes on without it
                stage(run, "train", "diverged", step=result["steps"], reason=result["diverged"])
                continue
            stage(run, "train", "done", step=result["steps"])
            stage(run, "generate", "running")
            stages.generate_stage(spec, job_dir, run, cache_dir, engine, backend=backend)
            stage(run, "generate", "done")
            stage(run, "judge", "running")
            summary = stages.judge_stage(spec, job_dir, run, api_key=api_key)
            stage(run, "judge", "done", win_rate=summary.get("win_rate"))
    finally:
        if engine is not None:
            engine.close()
    if spec.judge.evaluate_on is not None:
        stage("job", "judge-eval", "running")
        stages.judge_eval_stage(spec, job_dir, api_key=api_key)
        stage("job", "judge-eval", "done")
    if spec.comparisons.pairwise_beta is not None:
        stage("job", "pairwise", "running")
        stages.pairwise_stage(spec, job_dir, api_key=api_key)
        stage("job", "pairwise", "done")
    report = build_report(job_dir)
    stage("job", "report", "done", path=str(report))
    return report
