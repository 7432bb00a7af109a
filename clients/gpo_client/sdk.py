"""The Python SDK: ``Client`` and ``AsyncClient`` over httpx, typed with the service's own schemas.

from gpo_client import Client
client = Client("http://127.0.0.1:8700", api_key="...")
job = client.submit("sweep.yaml")
job = client.wait(job.id, progress=True)
client.download_report(job.id, "report.html")
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from gpo_core.sweep.views import JobPage, JobView

if TYPE_CHECKING:  # validating a spec needs the loss registry (torch, sympy): imported when used
    from gpo_core.sweep.spec import JobSpec

DEFAULT_SERVER = "http://127.0.0.1:8700"


class ApiError(Exception):
    """An error answer of the API: ``status``, ``code``, ``message`` and per-field ``details``."""

    def __init__(self, status: int, code: str, message: str, details: list[dict] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details or []


class Unauthorized(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class InvalidSpec(ApiError):
    pass


class TooManyRequests(ApiError):
    """Over the tenant's request rate (``code`` "rate_limited") or its limit of queued and running
    runs ("quota"); ``retry_after``: seconds the service asks to wait."""

    retry_after: float | None = None


_ERRORS = {401: Unauthorized, 404: NotFound, 409: Conflict, 422: InvalidSpec, 429: TooManyRequests}


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()
        code, message, details = body.get("error", "error"), body.get("message", response.text), body.get("details")
    except (json.JSONDecodeError, AttributeError):
        code, message, details = "error", response.text[:500], None
    error = _ERRORS.get(response.status_code, ApiError)(response.status_code, code, message, details)
    if isinstance(error, TooManyRequests) and response.headers.get("retry-after", "").isdigit():
        error.retry_after = float(response.headers["retry-after"])
    raise error


def spec_payload(spec: JobSpec | dict | str | Path) -> dict:
    """A spec object, a mapping or a YAML/JSON file, validated here first (same rules as the
    service), as the JSON body of ``POST /jobs``."""
    from gpo_core.sweep.spec import load_job_spec, parse_job_spec

    if isinstance(spec, str | Path):
        spec = load_job_spec(spec)
    elif isinstance(spec, dict):
        spec = parse_job_spec(spec)
    return spec.model_dump(mode="json")


@dataclass(frozen=True)
class Event:
    id: str | None
    type: str
    data: dict


class SSEParser:
    """Server-sent events from a stream of lines."""

    def __init__(self):
        self._id, self._type, self._data = None, "message", []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                return None
            event = Event(self._id, self._type, json.loads("\n".join(self._data)))
            self._type, self._data = "message", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = value
        elif name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        return None


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    if base_url is None or api_key is None:
        from gpo_client.stack import running_stack

        stack = running_stack()
        base_url = base_url or os.environ.get("GPO_SERVER") or (stack or {}).get("server") or DEFAULT_SERVER
        api_key = api_key or os.environ.get("GPO_API_KEY") or (stack or {}).get("api_key")
    return base_url.rstrip("/"), api_key


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    """Synchronous client. ``base_url`` and ``api_key`` default to $GPO_SERVER and $GPO_API_KEY,
    then to the local stack started by ``gpo up``."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 30.0):
        self.base_url, api_key = _settings(base_url, api_key)
        self.http = httpx.Client(base_url=self.base_url, headers=_headers(api_key), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(self, spec: JobSpec | dict | str | Path, idempotency_key: str | None = None) -> JobView:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return JobView.model_validate(_check(self.http.post("/jobs", json=spec_payload(spec), headers=headers)).json())

    def get(self, job_id: str) -> JobView:
        return JobView.model_validate(_check(self.http.get(f"/jobs/{job_id}")).json())

    def list(self, state: str | None = None, offset: int = 0, limit: int = 20) -> JobPage:
        params: dict[str, str | int] = {"offset": offset, "limit": limit, **({"state": state} if state else {})}
        return JobPage.model_validate(_check(self.http.get("/jobs", params=params)).json())

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(_check(self.http.post(f"/jobs/{job_id}/cancel")).json())

    def delete(self, job_id: str) -> None:
        """Delete a finished job: its artifacts and records (frees storage quota)."""
        _check(self.http.delete(f"/jobs/{job_id}"))

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events until it is over (reconnecting with Last-Event-ID if cut)."""
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with self.http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=None) as response:
                    _check_stream(response)
                    parser = SSEParser()
                    for line in response.iter_lines():
                        if (event := parser.feed(line)) is not None:
                            last_event_id = event.id or last_event_id
                            yield event
                return
            except (httpx.RemoteProtocolError, httpx.ReadError):
                continue  # the connection dropped: resume after the last event seen

    def wait(self, job_id: str, progress: bool = False) -> JobView:
        """Follow the job until it is over (with live progress bars if ``progress``)."""
        if not progress:
            for _ in self.events(job_id):
                pass
            return self.get(job_id)
        from gpo_client.progress import RunProgress

        with RunProgress() as display:
            for run in self.get(job_id).runs:
                display.add(run.id, run.steps, run.step, f"{run.stage}: {run.state}")
            for event in self.events(job_id):
                display.server_event(event)
        return self.get(job_id)

    def report_html(self, job_id: str) -> str:
        return _check(self.http.get(f"/jobs/{job_id}/report")).text

    def report_json(self, job_id: str) -> dict:
        return _check(self.http.get(f"/jobs/{job_id}/report.json")).json()

    def artifact(self, job_id: str, path: str) -> bytes:
        return _check(self.http.get(f"/jobs/{job_id}/artifacts/{path}")).content

    def upload(self, path: str | Path, name: str | None = None, kind: str = "pairs") -> dict:
        """Upload a dataset (``kind`` pairs or prompts; JSONL or Parquet) as this tenant's ``name``
        (default: the file's name); job specs then name it ``data:NAME``. Streamed from disk."""
        path = Path(path)
        with path.open("rb") as handle:
            response = self.http.put(
                f"/data/{name or path.name}",
                params={"kind": kind},
                content=handle,
                headers={"Content-Type": "application/octet-stream"},
                timeout=None,
            )
        return _check(response).json()

    def uploads(self) -> builtins.list[dict]:
        """This tenant's uploads: name, kind, bytes, sha256, records, reference (data:NAME)."""
        return _check(self.http.get("/data")).json()

    def delete_upload(self, name: str) -> None:
        _check(self.http.delete(f"/data/{name}"))

    def upload_model(self, folder: str | Path, name: str | None = None) -> dict:
        """Upload a transformers model folder (safetensors weights, config, tokenizer files) as this
        tenant's ``name`` (default: the folder's name); job specs then name it ``model:NAME``. Sent
        as a gzipped tar, built in a temporary file (never in memory)."""
        import tarfile
        import tempfile

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder}: not a model folder (no config.json)")
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=1) as tar:
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    tar.add(path, arcname=str(path.relative_to(folder)))
            archive.seek(0)
            response = self.http.put(
                f"/models/{name or folder.name}",
                content=archive,
                timeout=None,
                headers={"Content-Type": "application/x-tar"},
            )
        return _check(response).json()

    def models(self) -> builtins.list[dict]:
        """This tenant's models: name, bytes, sha256, files, model_type, parameters, reference."""
        return _check(self.http.get("/models")).json()

    def delete_model(self, name: str) -> None:
        _check(self.http.delete(f"/models/{name}"))

    def set_secret(self, name: str, value: str) -> None:
        """Store this tenant's secret ``name`` (an endpoint judge's API key); specs name it as
        ``judge.api_key_secret``. Write-only: the server never sends it back."""
        _check(self.http.put(f"/secrets/{name}", content=value.encode(), headers={"Content-Type": "text/plain"}))

    def secrets(self) -> builtins.list[str]:
        """The names of this tenant's secrets."""
        return _check(self.http.get("/secrets")).json()

    def delete_secret(self, name: str) -> None:
        _check(self.http.delete(f"/secrets/{name}"))

    def download_report(self, job_id: str, dest: str | Path) -> Path:
        """The HTML report (self-contained) and report.json beside it."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(self.report_html(job_id), encoding="utf-8")
        dest.with_name("report.json").write_text(json.dumps(self.report_json(job_id), indent=1), encoding="utf-8")
        return dest


def _check_stream(response: httpx.Response) -> None:
    if not response.is_success:
        response.read()
        _check(response)


class AsyncClient:
    """The same API for asyncio code."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 30.0):
        self.base_url, api_key = _settings(base_url, api_key)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(api_key), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(self, spec: JobSpec | dict | str | Path, idempotency_key: str | None = None) -> JobView:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self.http.post("/jobs", json=spec_payload(spec), headers=headers)
        return JobView.model_validate(_check(response).json())

    async def get(self, job_id: str) -> JobView:
        return JobView.model_validate(_check(await self.http.get(f"/jobs/{job_id}")).json())

    async def list(self, state: str | None = None, offset: int = 0, limit: int = 20) -> JobPage:
        params: dict[str, str | int] = {"offset": offset, "limit": limit, **({"state": state} if state else {})}
        return JobPage.model_validate(_check(await self.http.get("/jobs", params=params)).json())

    async def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(_check(await self.http.post(f"/jobs/{job_id}/cancel")).json())

    async def delete(self, job_id: str) -> None:
        _check(await self.http.delete(f"/jobs/{job_id}"))

    async def events(self, job_id: str, last_event_id: str | None = None) -> AsyncIterator[Event]:
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                async with self.http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=None) as response:
                    if not response.is_success:
                        await response.aread()
                        _check(response)
                    parser = SSEParser()
                    async for line in response.aiter_lines():
                        if (event := parser.feed(line)) is not None:
                            last_event_id = event.id or last_event_id
                            yield event
                return
            except (httpx.RemoteProtocolError, httpx.ReadError):
                continue

    async def wait(self, job_id: str) -> JobView:
        async for _ in self.events(job_id):
            pass
        return await self.get(job_id)

    async def report_json(self, job_id: str) -> dict:
        return _check(await self.http.get(f"/jobs/{job_id}/report.json")).json()

    async def artifact(self, job_id: str, path: str) -> bytes:
        return _check(await self.http.get(f"/jobs/{job_id}/artifacts/{path}")).content
