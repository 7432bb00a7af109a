"""The judge service: consumes judge tasks, compares a run's responses with the reference's (both
orders, cached verdicts), records the win rate; when every run of a job is judged (or diverged), makes the
pairwise comparisons, the judge's own accuracy (``judge.evaluate_on``) and the report (one
finalize task per job)."""

from __future__ import annotations

import json

from gpo_core.sweep import stages
from gpo_core.sweep.report import build_report
from gpo_core.sweep.spec import JobSpec, JobSpecError
from gpo_services.common.worker import FINALIZE, TaskContext, Worker


def handle(task: dict, context: TaskContext) -> None:
    job_id, run = task["job"], task["run"]
    if run == FINALIZE:
        finalize(job_id, context)
        return
    if context.skip_if_over(job_id, run):
        return
    spec = context.store.spec(job_id)
    check_endpoint(spec, context)
    context.store.transition(job_id, run, state="running", stage="judge")
    summary = stages.judge_stage(spec, context.job_dir(job_id), run, context.should_stop)
    if usage := summary.get("usage"):
        cost = f", cost {usage['cost']:.4f}" if usage.get("cost") is not None else ""
        context.store.log(job_id, f"{run}: the judge made {usage['requests']} requests, {usage['prompt_tokens']} "
                                  f"prompt and {usage['completion_tokens']} completion tokens{cost}")  # fmt: skip
    context.store.transition(job_id, run, state="succeeded", stage="done", win_rate=json.dumps(summary.get("win_rate")))
    context.finalize_when_all_done(job_id)


def check_endpoint(spec: JobSpec, context: TaskContext) -> None:
    """The control service admitted only the operator's endpoints; the worker checks again with its
    own configuration (the list may have shrunk since the job was queued)."""
    if spec.judge.calls_endpoint and not context.settings.allows_judge_endpoint(spec.judge.base_url or ""):
        raise JobSpecError(f"judge.base_url: {spec.judge.base_url} is not a judge endpoint of this deployment")


def finalize(job_id: str, context: TaskContext) -> None:
    if context.store.state(job_id) in ("cancelled", "failed"):
        return
    spec = context.store.spec(job_id)
    check_endpoint(spec, context)
    job_dir = context.job_dir(job_id)
    stages.judge_eval_stage(spec, job_dir, context.should_stop)
    stages.pairwise_stage(spec, job_dir, context.should_stop)
    page = build_report(job_dir)
    context.store.transition(job_id, job_fields={"report": str(page.relative_to(job_dir))})


def main() -> None:
    Worker("judge", "judge", handle).run()
