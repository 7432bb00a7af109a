"""The judge service: consumes judge tasks, compares a run's responses with the reference's (both
orders, cached verdicts), records the win rate; when every run of a job is judged (or diverged),
makes the pairwise comparisons, the judge's own accuracy (``judge.evaluate_on``) and the report
(one finalize task per job). Comparisons run in a task child; the judge's key (the operator's for
its endpoint, or the tenant's stored secret) reaches it in the task, never in its environment."""

from __future__ import annotations

import json
from pathlib import Path

from gpo_core.stopping import StopCheck
from gpo_core.sweep import online, stages
from gpo_core.sweep.spec import JobSpec, JobSpecError
from gpo_services.common.credentials import judge_api_key
from gpo_services.common.sandbox import Emit
from gpo_services.common.worker import FINALIZE, TaskContext, Worker

JUDGE = "gpo_services.judge.service:judge"
REPORT = "gpo_services.judge.service:report"
LABEL = "gpo_services.judge.service:label"


def handle(task: dict, context: TaskContext) -> None:
    job_id, run = task["job"], task["run"]
    if run == FINALIZE:
        finalize(job_id, context)
        return
    if context.skip_if_over(job_id, run):
        return
    spec = context.store.spec(job_id)
    check_endpoint(spec, context)
    round = task.get("round")
    context.store.transition(job_id, run, state="running", stage="judge", round="" if round is None else round)
    if round is not None:  # an online round's pairs, labelled by the annotator
        payload = {**_payload(spec, job_id, context, run), "round": round}
        payload["api_keys"] = {field: judge_api_key(spec, job_id, context, field) for field in spec.judges()}
        labels = context.run_task(LABEL, payload, job_id)
        context.advance(job_id, run, "judge", "done", round=round, pairs=labels["pairs"])
        return
    summary = context.run_task(JUDGE, _payload(spec, job_id, context, run), job_id)
    if usage := summary.get("usage"):
        cost = f", cost {usage['cost']:.4f}" if usage.get("cost") is not None else ""
        context.store.log(
            job_id,
            f"{run}: the judge made {usage['requests']} requests, {usage['prompt_tokens']} "
            f"prompt and {usage['completion_tokens']} completion tokens{cost}",
        )
    context.advance(job_id, run, "judge", "done", win_rate=json.dumps(summary.get("win_rate")))


def check_endpoint(spec: JobSpec, context: TaskContext) -> None:
    """The control service admitted only the operator's endpoints; the worker checks again with its
    own configuration (the list may have shrunk since the job was queued)."""
    for field, judge in spec.judges().items():
        if judge.calls_endpoint and not context.settings.allows_judge_endpoint(judge.base_url or ""):
            raise JobSpecError(f"{field}.base_url: {judge.base_url} is not a judge endpoint of this deployment")


def finalize(job_id: str, context: TaskContext) -> None:
    if context.store.state(job_id) in ("cancelled", "failed"):
        return
    spec = context.store.spec(job_id)
    check_endpoint(spec, context)
    written = context.run_task(REPORT, _payload(spec, job_id, context), job_id)
    # A report that cannot decide (a judge that told nothing apart) makes the job "inconclusive".
    context.store.transition(
        job_id, job_fields={"report": written["page"], "inconclusive": written["inconclusive"] or ""}
    )


def _payload(spec: JobSpec, job_id: str, context: TaskContext, run: str | None = None) -> dict:
    return {
        "spec": spec.model_dump_json(),
        "job_dir": str(context.job_dir(job_id)),
        "run": run,
        "api_key": judge_api_key(spec, job_id, context),
    }


def judge(payload: dict, emit: Emit, should_stop: StopCheck) -> dict:
    """In the task child: one run's comparisons with the reference."""
    spec, job_dir = JobSpec.model_validate_json(payload["spec"]), Path(payload["job_dir"])
    return stages.judge_stage(spec, job_dir, payload["run"], should_stop, api_key=payload["api_key"])


def label(payload: dict, emit: Emit, should_stop: StopCheck) -> dict:
    """In the task child: one online round's pairs labelled by the annotator."""
    spec, job_dir = JobSpec.model_validate_json(payload["spec"]), Path(payload["job_dir"])
    return online.label_round(spec, job_dir, payload["run"], payload["round"], should_stop, payload["api_keys"])


def report(payload: dict, emit: Emit, should_stop: StopCheck) -> dict:
    """In the task child: the judge's own accuracy, the pairwise comparisons and the report; the
    report page's path in the job folder, and why its win rates cannot decide (or None)."""
    spec, job_dir = JobSpec.model_validate_json(payload["spec"]), Path(payload["job_dir"])
    page = stages.finish_stage(spec, job_dir, should_stop, payload["api_key"])
    verdict = json.loads(page.with_name("report.json").read_text(encoding="utf-8"))
    return {"page": str(page.relative_to(job_dir)), "inconclusive": verdict.get("inconclusive")}


def main() -> None:
    Worker("judge", "judge", handle, keep_child=True).run()
