"""The trainer service: consumes train tasks and runs the training engine in a task child (in
that process, or on Ray Train when the job asks for workers: a Ray driver connected to
``RAY_ADDRESS`` or to a Ray it starts locally). Cancellation, a deadline and SIGTERM stop a run at
its next step, after a checkpoint (or a build of the built-in task at its next step); a
redelivered task resumes from that checkpoint. A run whose loss diverges is recorded as
``diverged`` and the job goes on."""

from __future__ import annotations

from pathlib import Path

from gpo_core.stopping import StopCheck
from gpo_core.sweep import online, stages
from gpo_core.sweep.preflight import start_job
from gpo_core.sweep.spec import JobSpec
from gpo_services.common.credentials import judge_api_key
from gpo_services.common.sandbox import Emit, ProgressEvents
from gpo_services.common.worker import TaskContext, Worker

TRAIN = "gpo_services.trainer.service:train"


def handle(task: dict, context: TaskContext) -> None:
    job_id, run = task["job"], task["run"]
    started = context.start_stage(task, "train")
    if started is None:
        return
    spec, payload = started
    # for the preflight's probe of each judge (an online job's annotator too)
    payload["judge_api_keys"] = {field: judge_api_key(spec, job_id, context, field) for field in spec.judges()}
    result = context.run_task(TRAIN, payload, job_id, run)
    outcome, recorded = stages.training_outcome(result)
    context.advance(job_id, run, "train", outcome, round=task.get("round"), **recorded)


def train(payload: dict, emit: Emit, should_stop: StopCheck) -> dict:
    """In the task child: the job folder's start (the built-in task, preflight) on its first task,
    then the run's training (or one online round's)."""
    from gpo_core.stopping import Stopped

    spec, job_dir = JobSpec.model_validate_json(payload["spec"]), Path(payload["job_dir"])
    start_job(spec, job_dir, lambda message: emit({"log": message}), should_stop, payload["judge_api_keys"])
    cache, sink = Path(payload["cache_dir"]), ProgressEvents(emit)
    if payload["round"] is None:
        result = stages.train_stage(spec, job_dir, payload["run"], sink, should_stop, cache)
    else:
        result = online.train_round(spec, job_dir, payload["run"], payload["round"], sink, should_stop, cache)
    if result["stopped"]:
        raise Stopped  # the worker decides: hand back, cancelled or past the deadline
    return result


def main() -> None:
    Worker("train", "trainer", handle, keep_child=True).run()
