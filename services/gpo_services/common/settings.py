"""Service configuration: one pydantic-settings model whose fields are the environment variables a
service reads (``GPO_`` + the field's name, ``RAY_ADDRESS``), so docker-compose, Kubernetes and
``gpo up`` set the names the code reads. ``ENVIRONMENT`` (name -> meaning) is derived from it, and
the deployment files and docs are checked against that list."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gpo_core.judging.endpoints import endpoint_url
from gpo_core.remote import normalized


@dataclass(frozen=True)
class Limits:
    """What one task's child may use."""

    cpu_seconds: int  # CPU time (all threads) before the kernel ends it (SIGXCPU, then SIGKILL)
    data_bytes: int  # heap and private anonymous mappings (RLIMIT_DATA); 0: no limit
    open_files: int
    stop_grace_s: float  # from "stop" to SIGTERM, and again to SIGKILL


class Settings(BaseSettings):
    # hide_input_in_errors: a malformed GPO_API_KEYS must not be echoed into logs by the error.
    model_config = SettingsConfigDict(
        env_prefix="GPO_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL for job records, events and the task queues."
    )
    redis_password: str | None = Field(
        None,
        repr=False,
        description="Redis's password, kept apart from GPO_REDIS_URL (a Secret in Kubernetes, .env in compose).",
    )
    artifacts: Path = Field(
        Path("outputs/artifacts"),
        description="Artifact root: one folder per job (a shared volume when services run on several hosts).",
    )
    cache_dir: Path | None = Field(
        None, description="Cache of built tasks, reference log-probs and reference samples (default ~/.cache/gpo)."
    )
    read_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders jobs may read models and data from besides their uploads, ':'-separated "
        "(shared base models); never the artifact root or the cache.",
    )
    judge_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Judge endpoints (OpenAI-compatible base URLs, http(s)) jobs may use, comma-separated, each "
        "as URL or URL=VARIABLE: the environment variable of the judge worker that holds that endpoint's key "
        "(sent to that endpoint only); none: endpoint judges are refused.",
    )
    remote_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Object-store prefixes (fsspec URIs, e.g. s3://bucket/models/) jobs may read models and data "
        "from, comma-separated; credentials from the environment (AWS_*).",
    )
    max_upload_bytes: int = Field(256 * 2**20, ge=1024, description="Largest dataset upload (PUT /data/NAME).")
    max_model_upload_bytes: int = Field(
        32 * 2**30, ge=1024, description="Largest model archive upload (PUT /models/NAME)."
    )
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        repr=False,  # key -> tenant; never logged
        description="API keys of the control service: 'key:tenant' pairs separated by commas.",
    )
    api_keys_file: Path | None = Field(
        None, description="A file of 'key:tenant' lines (a mounted Secret); read in addition to GPO_API_KEYS."
    )
    metrics_key: str | None = Field(
        None,
        min_length=16,
        repr=False,
        description="Bearer token for GET /metrics (the operator's scraper, not a tenant); unset: /metrics is off.",
    )
    api_docs: bool = Field(
        False, description="Serve /docs and /redoc (their JavaScript comes from a CDN); /openapi.json is always served."
    )
    host: str = Field("127.0.0.1", description="Address the control service listens on.")
    port: int = Field(8700, ge=1, le=65535, description="Port the control service listens on.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body the control service accepts.")
    max_event_streams: int = Field(
        8,
        ge=1,
        le=10_000,
        description="Event streams (GET /jobs/ID/events) one tenant may hold open per control process.",
    )
    event_stream_connections: int = Field(
        256, ge=1, description="Redis connections the event streams of one control process share (apart from the rest)."
    )
    max_active_runs: int = Field(
        256, ge=1, le=1_000_000, description="Runs one tenant may have queued or running at once (429 beyond)."
    )
    rate_limit_per_minute: int = Field(
        600, ge=0, le=1_000_000, description="Requests one tenant may make per minute (429 beyond); 0: no limit."
    )
    max_train_workers: int = Field(
        2, ge=0, le=4096, description="Most Ray Train workers one run may ask for: the deployment's capacity."
    )
    gpu_training: bool = Field(False, description="The trainers have GPUs: runs may set training.use_gpu.")
    max_generated_tokens: int = Field(
        50_000_000,
        ge=1,
        description="Most tokens one job may ask to sample: (runs + reference) x prompts x n x max_new_tokens.",
    )
    storage_quota_bytes: int = Field(
        0,
        ge=0,
        description="Bytes of uploads and job artifacts one tenant may hold (0: no limit); past it, "
        "uploads and new jobs are refused (403) until it deletes some.",
    )
    retention_days: float = Field(
        0, ge=0, description="Days a finished job's artifacts and records are kept (0: kept until deleted)."
    )
    max_header_bytes: int = Field(
        65_536, ge=4096, le=2**24, description="Largest request head (request line and headers): 431 beyond."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a connection has to deliver a request head (from opening, or from "
        "the head's first byte): 408 and closed beyond.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a request body may take to arrive (an upload: between two of its chunks): 408 beyond.",
    )
    workers: int = Field(
        1, ge=1, le=64, description="Processes of the control service, each listening on the port (SO_REUSEPORT)."
    )
    formula_timeout_s: float = Field(
        2.0, gt=0, le=60, description="Wall (and CPU) seconds to check a job spec's loss formulas, in a child process."
    )
    upload_check_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Wall (and CPU) seconds to read and check one dataset upload, in a child."
    )
    upload_check_memory_bytes: int = Field(
        1 * 2**30, ge=64 * 2**20, description="Memory a dataset upload's check may add, in its child process."
    )
    task_deadline_s: float = Field(
        86_400.0,
        gt=0,
        description="Longest one task (a run's training, sampling or judging) may run; then the run fails.",
    )
    task_stop_grace_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a task has to stop when asked (cancel, deadline, shutdown: a run checkpoints) "
        "before its process group is ended with SIGTERM, then SIGKILL.",
    )
    task_memory_bytes: int = Field(
        default_factory=lambda: int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
        ge=0,
        description="Data memory (heap and private mappings, RLIMIT_DATA) of one task's process; "
        "0: no limit. Default: 80% of this machine's memory.",
    )
    task_cpu_s: int = Field(
        0, ge=0, description="CPU seconds (all threads) of one task's process; 0: the deadline x the CPU count."
    )
    task_open_files: int = Field(16_384, ge=64, description="Open files of one task's process.")
    max_attempts: int = Field(
        3, ge=1, le=100, description="Attempts per task before it goes to the dead-letter stream."
    )
    claim_idle_s: float = Field(
        30.0, gt=0, description="Seconds without a heartbeat after which another worker reclaims a task."
    )
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between a busy worker's heartbeats.")
    worker_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Consumer name of a worker (default: host name and process id).",
    )
    liveness_file: Path | None = Field(
        None, description="A file a worker touches at every loop (for exec liveness probes)."
    )
    ray_address: str | None = Field(
        None,
        validation_alias="RAY_ADDRESS",
        description="Ray cluster the trainer connects to (default: it starts Ray locally).",
    )
    ray_auth_mode: str | None = Field(
        None,
        validation_alias="RAY_AUTH_MODE",
        description="Ray's own: 'token' makes a Ray cluster (and a task's local Ray) want a token from every client.",
    )
    ray_auth_token: str | None = Field(
        None,
        repr=False,
        validation_alias="RAY_AUTH_TOKEN",
        description="Ray's own: the cluster's token (a Secret); a task that drives the cluster gets it, nothing else.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        return parse_api_keys(value, "GPO_API_KEYS") if isinstance(value, str) else value

    @field_validator("redis_password")
    @classmethod
    def _own_password(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(EXAMPLE_PREFIX):
            raise ValueError(f"GPO_REDIS_PASSWORD is the example everyone has read: {MAKE_ONE}")
        return value

    @field_validator("read_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        return [part for part in value.split(":") if part.strip()] if isinstance(value, str) else value

    @field_validator("remote_roots", mode="before")
    @classmethod
    def _split_remote_roots(cls, value: object) -> object:
        parts = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
        if not isinstance(parts, list):
            return parts  # pydantic says what is wrong with it
        roots = [part for part in parts if part]
        for root in roots:
            if normalized(root) is None:
                raise ValueError(f"GPO_REMOTE_ROOTS: {root!r} is not a plain scheme://bucket/prefix URI")
        return roots

    @field_validator("judge_endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: object) -> object:
        parts = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
        if not isinstance(parts, list):
            return parts  # pydantic says what is wrong with it
        entries = []
        for part in filter(None, parts):
            url, _, variable = str(part).partition("=")
            if variable and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
                raise ValueError(f"GPO_JUDGE_ENDPOINTS: {variable!r} is not an environment variable's name")
            try:
                entries.append(endpoint_url(url) + (f"={variable}" if variable else ""))
            except ValueError as err:
                raise ValueError(f"GPO_JUDGE_ENDPOINTS: {err}") from None
        return entries

    def task_limits(self) -> Limits:
        """What one task's child process may use (see :mod:`gpo_services.common.sandbox`)."""
        cpu = self.task_cpu_s or int(min(self.task_deadline_s * (os.cpu_count() or 1), 2**31 - 1))
        return Limits(cpu, self.task_memory_bytes, self.task_open_files, self.task_stop_grace_s)

    def allows_judge_endpoint(self, url: str) -> bool:
        """Is ``url`` one of the operator's judge endpoints? (Compared after normalizing, so a
        tenant cannot reach any other host, port or path: the judge worker is no network scanner.)"""
        try:
            return endpoint_url(url) in self.judge_endpoint_urls()
        except ValueError:
            return False

    def judge_endpoint_urls(self) -> list[str]:
        return [entry.partition("=")[0] for entry in self.judge_endpoints]

    def judge_key_variable(self, url: str) -> str | None:
        """The variable holding the operator's key for judge endpoint ``url``, if the operator gave one."""
        wanted = endpoint_url(url)
        return next((v for u, _, v in (e.partition("=") for e in self.judge_endpoints) if u == wanted and v), None)

    def tenant_cache(self, tenant: str) -> Path:
        """The caches a tenant's jobs share among themselves and with nobody else (reference
        log-probs, the reference's samples): whether a cache hit, and how fast a run starts, tells
        a tenant nothing about another tenant's jobs. The built-in task's build stays shared."""
        return (self.cache_dir or _default_cache()) / "tenants" / hashlib.sha256(tenant.encode()).hexdigest()[:32]

    @model_validator(mode="after")
    def _roots_hold_no_tenant_data(self) -> Settings:
        """A read root holding the artifact root (every tenant's jobs and uploads) or the cache, or
        inside the artifact root, would give every tenant the others' data."""
        artifacts = Path(os.path.realpath(self.artifacts))
        cache = Path(os.path.realpath(self.cache_dir or _default_cache()))
        for root in self.read_roots:
            real = Path(os.path.realpath(root))
            if artifacts.is_relative_to(real) or cache.is_relative_to(real) or real.is_relative_to(artifacts):
                raise ValueError(f"GPO_READ_ROOTS: {root} holds or is inside the artifact root or the cache")
        return self

    @model_validator(mode="after")
    def _keys_from_file(self) -> Settings:
        if self.api_keys_file is not None:
            text = self.api_keys_file.read_text(encoding="utf-8").replace("\n", ",")
            self.api_keys = {**self.api_keys, **parse_api_keys(text, str(self.api_keys_file))}
        return self

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process's environment (what every service starts with)."""
        return cls()


def _default_cache() -> Path:
    return Path(os.environ.get("GPO_CACHE_DIR") or Path.home() / ".cache" / "gpo")


def environment_name(field: str) -> str:
    info = Settings.model_fields[field]
    return info.validation_alias if isinstance(info.validation_alias, str) else "GPO_" + field.upper()


# Every variable a service reads, with its meaning (docs and deployment files are checked against it).
# .env.example and deploy/k8s/secret.example.yaml hold placeholders starting so: never accepted.
EXAMPLE_PREFIX = "change-me"
MAKE_ONE = "make your own (python -c 'import secrets; print(secrets.token_urlsafe(24))')"

ENVIRONMENT = {environment_name(name): info.description for name, info in Settings.model_fields.items()}


def parse_api_keys(text: str, source: str) -> dict[str, str]:
    """``key:tenant`` pairs separated by commas (or lines); blank entries and # comments skipped."""
    keys: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        key, separator, tenant = entry.rpartition(":")
        if not separator or not key.strip() or not tenant.strip():
            raise ValueError(f"{source}: entry {number} is not 'key:tenant'")  # the key itself is never echoed
        if len(key.strip()) < 16:
            raise ValueError(f"{source}: entry {number}: API keys must be at least 16 characters")
        if key.strip().startswith(EXAMPLE_PREFIX):
            raise ValueError(f"{source}: entry {number} is the example key everyone has read: {MAKE_ONE}")
        keys[key.strip()] = tenant.strip()
    return keys
