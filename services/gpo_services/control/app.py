"""The control service: the FastAPI application (``create_app``) and its process entry point."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpo_core.sweep.spec import JobSpec
from gpo_core.sweep.views import ErrorBody
from gpo_services.common.connection import connect, connect_async
from gpo_services.common.queue import STAGES, TaskQueue
from gpo_services.common.settings import Settings
from gpo_services.common.store import AsyncJobStore, JobStore
from gpo_services.control import errors, processes, storage
from gpo_services.control.deps import bearer_key
from gpo_services.control.routes.data import router as data_router
from gpo_services.control.routes.jobs import router as jobs_router
from gpo_services.control.routes.models import router as models_router
from gpo_services.control.routes.secrets import router as secrets_router
from gpo_services.control.security import tenant_for
from gpo_services.control.server import server_config
from gpo_services.control.validation import TenantChecks


class BodyLimit:
    """Bound request bodies before the application reads them: in size (413, by Content-Length or
    by counting a chunked body) and in time (408: a client announcing 100 bytes and sending 2 no
    longer holds a connection). A body is read whole within ``timeout_s`` and replayed to the app.
    Uploads (``/data/``, ``/models/``) have their own, larger limits and are streamed to disk by
    their routes, which count the bytes; each of their chunks must arrive within ``timeout_s``."""

    def __init__(self, app: ASGIApp, limit: int, upload_limits: dict[str, int], timeout_s: float):
        self.app, self.limit, self.upload_limits, self.timeout_s = app, limit, upload_limits, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        prefix = next((p for p in self.upload_limits if scope["path"].startswith(p)), None)
        upload = prefix is not None
        limit = self.upload_limits[prefix] if prefix is not None else self.limit
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(limit, scope, receive, send)
            return
        if upload:
            await self.app(scope, self._each_chunk_in_time(receive), send)
            return
        if declared is None and headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            await self.app(scope, receive, send)  # no body
            return
        body, more = b"", True
        try:
            async with asyncio.timeout(self.timeout_s):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > limit:
                        await self._too_large(limit, scope, receive, send)
                        return
        except TimeoutError:
            response = errors.error_response(
                408,
                "timeout",
                f"the request body did not arrive within {self.timeout_s:g} s",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _each_chunk_in_time(self, receive: Receive) -> Receive:
        finished = False

        async def bounded() -> Message:
            nonlocal finished
            if finished:  # the body is in: what follows is a wait for the disconnect, not bounded
                return await receive()
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                raise errors.BodyTimeout(self.timeout_s) from None
            finished = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return bounded

    @staticmethod
    async def _too_large(limit: int, scope, receive, send) -> None:
        response = errors.error_response(413, "too_large", f"request body over {limit} bytes")
        await response(scope, receive, send)


# Every answer: a report page (HTML written from a tenant's job) may show its inline styles and
# data: images, and nothing else: no script, no request elsewhere, no framing; no type sniffing.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
]


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response (a plain ASGI middleware)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class RequestMetrics:
    """Requests by method, route and status, and their latency (a plain ASGI middleware: no
    per-request task or body buffering)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry):
        self.app = app
        self.requests = Counter("gpo_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry)
        self.latency = Histogram("gpo_http_request_seconds", "Request latency", ["method", "route"], registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            self.requests.labels(scope["method"], path, str(status)).inc()
            self.latency.labels(scope["method"], path).observe(time.perf_counter() - started)


class _QueueDepth:
    """Queue depths, read from Redis at scrape time."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def collect(self):
        gauge = GaugeMetricFamily("gpo_queue_tasks", "Tasks per stage queue and state", labels=["stage", "state"])
        try:
            for stage in STAGES:
                for state, value in TaskQueue(self.client, stage, "metrics").depth().items():
                    gauge.add_metric([stage, state], value)
        except redis.RedisError:
            pass
        yield gauge


def create_app(settings: Settings | None = None, client: redis.Redis | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    client = client or connect(settings)
    store = JobStore(client)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = asyncio.create_task(storage.retention_loop(settings, store)) if settings.retention_days else None
        yield
        if sweeper is not None:
            sweeper.cancel()

    # /docs and /redoc load their JavaScript from a CDN: off unless the operator asks (GPO_API_DOCS);
    # the document itself is always at /openapi.json.
    app = FastAPI(
        title="GPO control service",
        version="0.1.0",
        description="Submit loss x beta sweeps of Generalized Preference Optimization, follow them, read reports.",
        lifespan=lifespan,
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.async_store = AsyncJobStore(connect_async(settings))
    # Event streams block on Redis for seconds at a time: a pool of their own, so a tenant's many
    # open streams never take the connections every other call needs.
    app.state.event_store = AsyncJobStore(connect_async(settings, settings.event_stream_connections))
    app.state.event_streams = {}  # tenant -> streams open in this process
    app.state.tenant_checks = TenantChecks(settings.formula_timeout_s)
    app.openapi = lambda: _openapi_with_job_spec(app)  # type: ignore[method-assign]  # FastAPI's documented way
    app.include_router(jobs_router)
    app.include_router(data_router)
    app.include_router(models_router)
    app.include_router(secrets_router)
    # Each handler takes its own exception type (Starlette's annotation wants Exception itself).
    handlers: list[tuple[type[Exception], Callable[..., Any]]] = [
        (errors.ApiError, errors.api_error),
        (errors.BodyTimeout, errors.body_timeout),
        (RequestValidationError, errors.validation_error),
        (StarletteHTTPException, errors.http_error),
        (redis.RedisError, errors.redis_error),
        (Exception, errors.unexpected_error),
    ]
    for exception, handler in handlers:
        app.add_exception_handler(exception, handler)
    registry = CollectorRegistry()
    registry.register(_QueueDepth(client))
    uploads = {"/data/": settings.max_upload_bytes, "/models/": settings.max_model_upload_bytes}
    app.add_middleware(
        BodyLimit, limit=settings.max_body_bytes, upload_limits=uploads, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(RequestMetrics, registry=registry)
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz():
        """Redis is reachable (readiness): answered within 2 s whatever Redis does, and naming no
        address (anyone may ask)."""
        try:
            async with asyncio.timeout(2):
                await app.state.async_store.r.ping()
        except (redis.RedisError, TimeoutError):
            return errors.error_response(503, "not_ready", "redis unreachable")
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody, "description": "Metrics are off"}},
    )
    def metrics(request: Request) -> Response:
        """Prometheus metrics: requests, latency, queue depths. For the operator's scraper only
        (``Authorization: Bearer`` the ``GPO_METRICS_KEY``, as strictly as a tenant's key: one
        header, the Bearer scheme): the figures span every tenant."""
        if settings.metrics_key is None:
            raise errors.ApiError(404, "not_found", "metrics are off; an operator sets GPO_METRICS_KEY")
        if tenant_for({settings.metrics_key: "metrics"}, bearer_key(request)) is None:
            raise errors.ApiError(401, "unauthorized", "the metrics key is required: Authorization: Bearer <key>")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _openapi_with_job_spec(app: FastAPI) -> dict:
    """FastAPI's document, with the JobSpec schema that POST /jobs refers to (its body is read as
    JSON and validated by the handler, so FastAPI does not see the model by itself)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["JobSpec"] = schema
        app.openapi_schema = document
    return app.openapi_schema


def serving_app() -> FastAPI:
    """The app of a serving process: built from the environment, then every object that exists so
    far (torch and the app: ~250k objects) is moved out of the garbage collector's sight. Without
    this, each full collection walked them all and stalled requests (up to 256 ms with ~420k),
    which set the p99 latency under load (docs/reliability.md)."""
    app = create_app()
    app.state.tenant_checks.warm_up()  # the forkserver imports torch once, now, not on a request
    gc.freeze()
    return app


def main() -> None:
    import uvicorn

    settings = Settings.from_env()
    if not settings.api_keys:
        raise SystemExit("no API keys configured: set GPO_API_KEYS='key:tenant' or GPO_API_KEYS_FILE")
    if settings.workers > 1:
        processes.serve(settings)  # one socket per process (SO_REUSEPORT), see processes.py
    else:
        config = server_config(
            "gpo_services.control.app:serving_app", settings, factory=True, host=settings.host, port=settings.port
        )
        uvicorn.Server(config).run()
