"""The embedded runner: a whole sweep in this process, no Redis and no services (``gpo run``).

The stages are the services' stages, in the order of a run's lifecycle
(:mod:`gpo_core.sweep.pipeline`): the reference's samples, then each run's stages until it is over
(an online run's rounds first; a run that diverges in training ends there, recorded as such), then
the job's finishing step (pairwise comparisons, the judge's own accuracy, the report). Every stage
skips work already on disk, so running the same spec into the same folder again resumes where it
stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpo_core.cache import cache_root
from gpo_core.generate import start_engine
from gpo_core.sweep import online, stages
from gpo_core.sweep.pipeline import FINISH, REFERENCE, STAGES, Outcome, RunStage, Step, next_step
from gpo_core.sweep.preflight import preflight
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


class _Stopped(Exception):
    """A stop was asked for during training: the sweep ends here, resumable."""


def run_job(
    spec: JobSpec,
    job_dir: str | Path,
    cache_dir: str | Path | None = None,
    events: Events | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> Path | None:
    """Run the sweep into ``job_dir``; returns the report's path, or None when stopped early."""
    job_dir = Path(job_dir)
    cache = Path(cache_dir) if cache_dir else cache_root()
    emit = events or (lambda event: None)

    def stage(run: str, name: str, state: str, **extra) -> None:
        emit({"kind": "stage", "run": run, "stage": name, "state": state, **extra})

    stages.write_job_file(spec, job_dir)
    stage("job", "prepare", "running")
    inputs = stages.resolve_inputs(spec, progress=lambda message: emit({"kind": "log", "message": message}))
    stage("job", "prepare", "done")
    api_key = stages.embedded_api_key(spec)
    keys = {field: stages.embedded_api_key(spec, field) for field in spec.judges()}
    preflight(spec, inputs, lambda message: emit({"kind": "log", "message": message}), api_keys=keys)
    engine, note = start_engine(inputs.reference, spec.generation.backend, stages.lora_rank(spec))
    for message in (note, online.engine_restart_note(spec, engine)):
        if message:
            emit({"kind": "log", "message": message})
    backend = "vllm" if engine is not None else "transformers"

    def round_stage(name: RunStage, run: str, round: int) -> tuple[Outcome, dict]:
        """One stage of an online round of ``run``: its outcome, and what its event tells."""
        if name == "generate":
            online.sample_round(spec, job_dir, run, round, engine, backend=backend)
            return "done", {}
        if name == "judge":
            labels = online.label_round(spec, job_dir, run, round, api_keys=keys)
            return "done", {"pairs": labels["pairs"]}
        result = online.train_round(spec, job_dir, run, round, _RunSink(run, emit), stop_requested)
        if result["stopped"]:
            stage(run, "train", "stopped", round=round, step=result["steps"])
            raise _Stopped
        return stages.training_outcome(result)

    def run_stage(name: RunStage, run: str) -> tuple[Outcome, dict]:
        """One stage of ``run``: its outcome, and what its event tells."""
        if name == "train":
            result = stages.train_stage(spec, job_dir, run, _RunSink(run, emit), stop_requested)
            if result["stopped"]:
                stage(run, "train", "stopped", step=result["steps"])
                raise _Stopped
            return stages.training_outcome(result)
        if name == "generate":
            stages.generate_stage(spec, job_dir, run, cache, engine, backend=backend)
            return "done", {}
        summary = stages.judge_stage(spec, job_dir, run, api_key=api_key)
        return "done", {"win_rate": summary.get("win_rate")}

    try:
        stage(REFERENCE, "generate", "running")
        stages.generate_stage(spec, job_dir, REFERENCE, cache, engine, backend=backend)
        stage(REFERENCE, "generate", "done")
        for run, target in zip(spec.run_ids(), spec.run_list(), strict=True):
            rounds = spec.rounds(target)
            step = Step(STAGES[0], "queued")
            while step.stage != "done":
                position, round = step.stage, step.round
                where = {} if round is None else {"round": round}
                stage(run, position, "running", **where)
                if round is None:
                    outcome, told = run_stage(position, run)
                else:
                    outcome, told = round_stage(position, run, round)
                stage(run, position, outcome, **where, **told)
                step = next_step(position, outcome, round, rounds)
    except _Stopped:
        return None
    finally:
        if engine is not None:
            engine.close()
    report = stages.finish_stage(spec, job_dir, api_key=api_key, progress=lambda step, state: stage("job", step, state))
    stage("job", FINISH, "done", path=str(report))
    return report
