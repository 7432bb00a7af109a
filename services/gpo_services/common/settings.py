"""Service configuration, from environment variables only (one list: ``ENVIRONMENT``), so that
docker-compose, Kubernetes and ``gpo up`` set the same names the code reads."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, Field

# Every variable a service reads, with its meaning (docs and deployment files are checked against it).
ENVIRONMENT = {
    "GPO_REDIS_URL": "Redis URL for job records, events and the task queues.",
    "GPO_ARTIFACTS": "Artifact root: one folder per job (a shared volume when services run on several hosts).",
    "GPO_CACHE_DIR": "Cache of built tasks, reference log-probs and reference samples.",
    "GPO_API_KEYS": "API keys of the control service: 'key:tenant' pairs separated by commas.",
    "GPO_API_KEYS_FILE": "A file of 'key:tenant' lines (a mounted Secret); read in addition to GPO_API_KEYS.",
    "GPO_HOST": "Address the control service listens on.",
    "GPO_PORT": "Port the control service listens on.",
    "GPO_MAX_BODY_BYTES": "Largest request body the control service accepts.",
    "GPO_WORKERS": "Processes of the control service, each listening on the port (SO_REUSEPORT).",
    "GPO_MAX_ATTEMPTS": "Attempts per task before it goes to the dead-letter stream.",
    "GPO_CLAIM_IDLE_S": "Seconds without a heartbeat after which another worker reclaims a task.",
    "GPO_HEARTBEAT_S": "Seconds between a busy worker's heartbeats.",
    "GPO_WORKER_NAME": "Consumer name of a worker (default: host name and process id).",
    "GPO_LIVENESS_FILE": "A file a worker touches at every loop (for exec liveness probes).",
    "RAY_ADDRESS": "Ray cluster the trainer connects to (default: it starts Ray locally).",
}


class Settings(BaseModel):
    redis_url: str = "redis://127.0.0.1:6379/0"
    artifacts: Path = Path("outputs/artifacts")
    host: str = "127.0.0.1"
    port: int = Field(8700, ge=1, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    workers: int = Field(1, ge=1, le=64)
    max_attempts: int = Field(3, ge=1, le=100)
    claim_idle_s: float = Field(30.0, gt=0)
    heartbeat_s: float = Field(5.0, gt=0)
    worker_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    liveness_file: Path | None = None
    api_keys: dict[str, str] = Field(default_factory=dict, repr=False)  # key -> tenant; never logged

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        fields = {
            "redis_url": env.get("GPO_REDIS_URL"),
            "artifacts": env.get("GPO_ARTIFACTS"),
            "host": env.get("GPO_HOST"),
            "port": env.get("GPO_PORT"),
            "max_body_bytes": env.get("GPO_MAX_BODY_BYTES"),
            "workers": env.get("GPO_WORKERS"),
            "max_attempts": env.get("GPO_MAX_ATTEMPTS"),
            "claim_idle_s": env.get("GPO_CLAIM_IDLE_S"),
            "heartbeat_s": env.get("GPO_HEARTBEAT_S"),
            "worker_name": env.get("GPO_WORKER_NAME"),
            "liveness_file": env.get("GPO_LIVENESS_FILE"),
        }
        keys = parse_api_keys(env.get("GPO_API_KEYS", ""), "GPO_API_KEYS")
        if env.get("GPO_API_KEYS_FILE"):
            path = Path(env["GPO_API_KEYS_FILE"])
            keys.update(parse_api_keys(path.read_text(encoding="utf-8").replace("\n", ","), str(path)))
        return cls(**{k: v for k, v in fields.items() if v not in (None, "")}, api_keys=keys)


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
        keys[key.strip()] = tenant.strip()
    return keys
