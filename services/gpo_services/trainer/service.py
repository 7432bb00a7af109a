"""The trainer service: consumes train tasks and runs the training engine (in this process, or on
Ray Train when the job asks for workers: a Ray driver connected to ``RAY_ADDRESS`` or to a Ray
it starts locally). Cancellation, a deadline and SIGTERM stop a run at its next step, after a
checkpoint (or a build of the built-in task at its next step); a redelivered task resumes from
that checkpoint. A run whose loss diverges is recorded as ``diverged`` and the job goes on."""

from __future__ import annotations

from gpo_core.stopping import Stopped
from gpo_core.sweep import stages
from gpo_core.sweep.preflight import preflight
from gpo_services.common.worker import ProgressSink, TaskContext, Worker


def handle(task: dict, context: TaskContext) -> None:
    job_id, run = task["job"], task["run"]
    if context.skip_if_over(job_id, run):
        return
    spec = context.store.spec(job_id)
    job_dir = context.job_dir(job_id)
    context.store.transition(job_id, run, state="running", stage="train")
    if not (job_dir / "job.json").exists():  # the job folder starts with the job's first task
        # Before any training: data, tokenizer and judge can do their part (a PreflightError
        # fails the job at once; an unreachable judge endpoint is retried later).
        inputs = stages.resolve_inputs(spec, should_stop=context.should_stop)
        preflight(spec, inputs, should_stop=context.should_stop)
        stages.write_job_file(spec, job_dir)
    result = stages.train_stage(spec, job_dir, run, ProgressSink(context, job_id, run), context.should_stop)
    if result["stopped"]:
        raise Stopped  # the worker decides: hand back, cancelled or past the deadline
    if result.get("diverged"):  # done, with no model: the job goes on without this run
        context.store.transition(job_id, run, state="diverged", stage="done", step=result["steps"],
                                 reason=result["diverged"])  # fmt: skip
        context.finalize_when_all_done(job_id)
        return
    context.store.transition(job_id, run, state="queued", stage="generate", step=result["steps"])
    context.enqueue("generate", job_id, run)


def main() -> None:
    Worker("train", "trainer", handle).run()
