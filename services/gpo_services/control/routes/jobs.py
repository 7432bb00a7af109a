"""The /jobs API: submit a sweep, follow it, cancel it, read its report and artifacts."""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from gpo_core.sweep.views import TERMINAL, ErrorBody, JobPage, JobState, JobView
from gpo_services.common.store import Conflict, QuotaExceeded
from gpo_services.control import storage
from gpo_services.control.deps import AsyncStoreDep, SettingsDep, StoreDep, TenantDep
from gpo_services.control.errors import RATE_LIMITED, STORAGE_QUOTA, UNAUTHORIZED, ApiError, invalid
from gpo_services.control.inputs import resolve_spec_paths
from gpo_services.control.limits import check_capacity
from gpo_services.control.redaction import TEXT_SUFFIXES, Redactor, job_redactor
from gpo_services.control.security import artifact_path
from gpo_services.control.validation import SpecInvalid, needs_symbolic_work, validate_here

router = APIRouter(prefix="/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    404: {"model": ErrorBody, "description": "No such job for this tenant"},
    422: {"model": ErrorBody, "description": "Invalid parameters; details name each one"},
    429: RATE_LIMITED,
    503: {"model": ErrorBody, "description": "The job store (Redis) is unreachable; retry"},
}


def _found(job: JobView | None, job_id: str) -> JobView:
    """The job, or a 404 (also for another tenant's job: its existence is not revealed)."""
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return job


def _job_or_404(store, job_id: str, tenant: str) -> JobView:
    return _found(store.get(job_id, tenant), job_id)


def _shown(store, settings, job: JobView) -> JobView:
    """``job`` as its tenant sees it: no server path in its reasons."""
    return job_redactor(settings, job.id, store.names(job.id)).view(job)


@router.post(
    "",
    status_code=201,
    response_model=JobView,
    # The body is read as JSON and validated by submit_job (formulas off the event loop); the
    # document still shows it as a JobSpec (components added in app.py).
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
        }
    },
    responses={
        **ERRORS,
        200: {"model": JobView, "description": "A retry with the same Idempotency-Key: the job it created"},
        409: {"model": ErrorBody, "description": "Idempotency-Key reused with a different spec"},
        429: {
            "model": ErrorBody,
            "description": "Over the request rate, or the job would pass the tenant's "
            "limit of queued and running runs (GPO_MAX_ACTIVE_RUNS); Retry-After",
        },
        403: STORAGE_QUOTA,
        413: {"model": ErrorBody, "description": "Request body too large"},
        422: {"model": ErrorBody, "description": "Invalid spec; details name each field"},
    },
)
async def submit_job(
    body: Annotated[dict[str, Any], Body(description="A JobSpec (schema: JobSpec).")],
    request: Request,
    response: Response,
    store: AsyncStoreDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobView:
    """Validate the sweep, store the job and its runs, and queue one training task per run. A spec
    with loss formulas of its own or IPO-unit betas is checked in a limited child process
    (validation.py); the paths
    it names must be the tenant's uploads (data:NAME) or under the shared read-only roots."""
    try:
        if needs_symbolic_work(body):
            spec = await request.app.state.tenant_checks.validate(body, tenant)
        else:
            spec = validate_here(body)
    except SpecInvalid as err:
        raise invalid(err.details) from None
    await storage.ensure_room(settings, request.app.state.store, tenant)
    # Only its uploads and the shared read-only roots. Reading a store or counting a file's prompts
    # is I/O that may take a while: off the event loop; the built-in task needs neither.
    if spec.task is None:
        spec, names = await asyncio.to_thread(resolve_spec_paths, spec, tenant, settings)
        await asyncio.to_thread(check_capacity, spec, settings)
    else:
        spec, names = resolve_spec_paths(spec, tenant, settings)
        check_capacity(spec, settings)
    try:
        job, created = await store.create_job(tenant, spec, idempotency_key, settings.max_active_runs, names)
    except Conflict as err:
        raise ApiError(409, "conflict", str(err)) from None
    except QuotaExceeded as err:
        raise ApiError(
            429, "quota", f"{err}; submit again when some have finished", headers={"Retry-After": "30"}
        ) from None
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return job_redactor(settings, job.id, await store.names(job.id)).view(job)


@router.get("", response_model=JobPage, responses={k: ERRORS[k] for k in (401, 422, 429, 503)})
def list_jobs(
    store: StoreDep,
    tenant: TenantDep,
    settings: SettingsDep,
    state: JobState | None = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobPage:
    """This tenant's jobs, newest first."""
    page = store.list(tenant, state, offset, limit)
    return page.model_copy(update={"jobs": [_shown(store, settings, job) for job in page.jobs]})


@router.get("/{job_id}", response_model=JobView, responses=ERRORS)
async def get_job(job_id: str, store: AsyncStoreDep, tenant: TenantDep, settings: SettingsDep) -> JobView:
    """State, each run's stage and progress, and the win rates so far."""
    job = _found(await store.get(job_id, tenant), job_id)
    return job_redactor(settings, job_id, await store.names(job_id)).view(job)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobView,
    responses={**ERRORS, 409: {"model": ErrorBody, "description": "The job has already finished"}},
)
def cancel_job(job_id: str, store: StoreDep, tenant: TenantDep, settings: SettingsDep) -> JobView:
    """Cancel the job: a running training stops at its next step (a checkpoint is kept), queued
    tasks are skipped."""
    _job_or_404(store, job_id, tenant)
    try:
        store.request_cancel(job_id)
    except Conflict as err:
        raise ApiError(409, "conflict", str(err)) from None
    return _shown(store, settings, _found(store.get(job_id), job_id))


@router.delete(
    "/{job_id}",
    status_code=204,
    responses={**ERRORS, 409: {"model": ErrorBody, "description": "The job has not finished: cancel it first"}},
)
async def delete_job(job_id: str, store: StoreDep, tenant: TenantDep, settings: SettingsDep) -> Response:
    """Delete a finished job: its folder (models, samples, report) and its records. Frees its
    share of the tenant's storage quota."""
    job = _job_or_404(store, job_id, tenant)
    if job.state not in TERMINAL:
        raise ApiError(409, "conflict", f"job {job_id} is {job.state}; cancel it first")
    await asyncio.to_thread(storage.delete_job, settings, store, job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/events",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
)
async def job_events(
    job_id: str,
    request: Request,
    store: AsyncStoreDep,
    tenant: TenantDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Server-sent events: ``job_state``, ``run_state``, ``metrics`` and ``log``, each with its
    stream id (send it back as Last-Event-ID to resume). The stream ends when the job is over.
    Streams wait on the event loop, on Redis connections of their own (never the pool the other
    calls use), at most ``GPO_MAX_EVENT_STREAMS`` open per tenant and control process (429 beyond)."""
    if await store.get(job_id, tenant) is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    streams = request.app.state.event_streams
    if streams.get(tenant, 0) >= settings.max_event_streams:
        raise ApiError(
            429,
            "too_many_streams",
            f"at most {settings.max_event_streams} event streams open at once; close one",
            headers={"Retry-After": "5"},
        )
    after = last_event_id if last_event_id and _is_stream_id(last_event_id) else "0"
    events = request.app.state.event_store
    redactor = job_redactor(settings, job_id, await store.names(job_id))
    streams[tenant] = streams.get(tenant, 0) + 1

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            async for event in events.follow(job_id, after, block_ms=1000):
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                event_id, kind, data, ts = event
                yield f"id: {event_id}\nevent: {kind}\ndata: {json.dumps({**redactor.data(data), 'ts': ts})}\n\n"
        finally:
            streams[tenant] -= 1

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _is_stream_id(value: str) -> bool:
    first, _, second = value.partition("-")
    return first.isdigit() and (second == "" or second.isdigit())


def _report_file(store, settings, job_id: str, tenant: str, name: str) -> Path:
    _job_or_404(store, job_id, tenant)
    path = artifact_path(settings.artifacts / job_id, f"report/{name}")
    if path is None:
        raise ApiError(404, "not_found", f"job {job_id} has no report yet")
    return path


@router.get("/{job_id}/report", responses={**ERRORS, 200: {"content": {"text/html": {}}}})
def job_report(job_id: str, store: StoreDep, tenant: TenantDep, settings: SettingsDep) -> Response:
    """The self-contained HTML report (figures inlined)."""
    path = _report_file(store, settings, job_id, tenant, "report.html")
    return file_snapshot(path, job_redactor(settings, job_id, store.names(job_id)))


@router.get("/{job_id}/report.json", responses={**ERRORS, 200: {"content": {"application/json": {}}}})
def job_report_json(job_id: str, store: StoreDep, tenant: TenantDep, settings: SettingsDep) -> Response:
    """Every number of the report."""
    path = _report_file(store, settings, job_id, tenant, "report.json")
    return file_snapshot(path, job_redactor(settings, job_id, store.names(job_id)))


SNAPSHOT_BYTES = 8 * 2**20  # files up to this size are read whole: one consistent snapshot


def redacted_chunks(path: Path, size: int, redactor: Redactor) -> Iterator[bytes]:
    """The first ``size`` bytes of a text file, redacted a megabyte at a time, each cut at its last
    newline (a path never spans one), or inside a line longer than a snapshot short of its last
    path's length, so that no path is split between two pieces."""
    carry = b""
    with path.open("rb") as handle:
        left = size
        while left > 0 and (chunk := handle.read(min(2**20, left))):
            left -= len(chunk)
            pending = carry + chunk
            cut = pending.rfind(b"\n") + 1
            if cut == 0 and len(pending) < SNAPSHOT_BYTES:
                carry = pending  # one long line so far: wait for its end
                continue
            cut = cut or len(pending) - redactor.longest  # a line longer than a snapshot: keep a path's length
            yield redactor.raw(pending[:cut])
            carry = pending[cut:]
    if carry:
        yield redactor.raw(carry)


def file_snapshot(path: Path, redactor: Redactor) -> Response:
    """The file as it is when asked for, a text file with no server path in it (see
    :mod:`..redaction`). A running run's files change while they are served (a metrics file grows;
    a resumed run cuts it back): a small one is read whole at once, a large one streamed up to the
    size it had (line by line when it is text), so the body never disagrees with its length."""
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    text = path.suffix in TEXT_SUFFIXES
    size = path.stat().st_size
    if size <= SNAPSHOT_BYTES:
        with path.open("rb") as handle:
            content = handle.read(SNAPSHOT_BYTES)
        return Response(redactor.raw(content) if text else content, media_type=media_type)
    if text:
        return StreamingResponse(redacted_chunks(path, size, redactor), media_type=media_type)

    def chunks():
        with path.open("rb") as handle:
            left = size
            while left > 0 and (chunk := handle.read(min(2**20, left))):
                left -= len(chunk)
                yield chunk

    return StreamingResponse(chunks(), media_type=media_type, headers={"Content-Length": str(size)})


@router.get("/{job_id}/artifacts/{path:path}", responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}}})
def job_artifact(job_id: str, path: str, store: StoreDep, tenant: TenantDep, settings: SettingsDep) -> Response:
    """A file of the job's folder, e.g. ``runs/RUN/responses.jsonl`` or ``report/pairwise.png``."""
    _job_or_404(store, job_id, tenant)
    found = artifact_path(settings.artifacts / job_id, path)
    if found is None:
        raise ApiError(404, "not_found", f"no artifact {path!r} in job {job_id}")
    return file_snapshot(found, job_redactor(settings, job_id, store.names(job_id)))
