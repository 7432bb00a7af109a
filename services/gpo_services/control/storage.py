"""Each tenant's share of the artifact volume: its uploads and its jobs' folders, bounded by
``GPO_STORAGE_QUOTA_BYTES``; and how long a finished job's artifacts are kept
(``GPO_RETENTION_DAYS``). A tenant over its quota can still read and delete, but cannot upload or
submit until it has made room (``DELETE /jobs/{id}``, ``DELETE /data/{name}``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis
from pydantic import BaseModel

from gpo_core.sweep.views import TERMINAL
from gpo_services.common.logs import log, service_logger
from gpo_services.common.settings import Settings
from gpo_services.common.store import JobStore
from gpo_services.control.errors import ApiError

T = TypeVar("T", bound=BaseModel)
RETENTION_LOCK = "gpo:retention:lock"
UPLOADS = ".uploads"  # inside the artifact root (a volume every service shares); job ids are hex


def tenant_folder(settings: Settings, tenant: str) -> Path:
    """The tenant's upload folder; named by a hash, so no tenant name ever becomes a path."""
    return settings.artifacts / UPLOADS / hashlib.sha256(tenant.encode()).hexdigest()[:24]


def stored_records(folder: Path, record_type: type[T], present: Callable[[str], bool]) -> list[T]:
    """The records kept beside stored items (``.NAME.json``), by name, for items still present."""
    records = []
    for meta in sorted(folder.glob(".*.json")) if folder.exists() else []:
        record = record_type.model_validate(json.loads(meta.read_text(encoding="utf-8")))
        if present(getattr(record, "name")):  # noqa: B009 (every stored record has a name)
            records.append(record)
    return records


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total, folders = 0, [path]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def tenant_bytes(settings: Settings, store: JobStore, tenant: str) -> int:
    """What the tenant holds on the artifact volume: its uploads and its jobs' folders."""
    jobs = store.r.zrange(f"gpo:tenant:{tenant}:jobs", 0, -1)
    return folder_bytes(tenant_folder(settings, tenant)) + sum(folder_bytes(settings.artifacts / j) for j in jobs)


async def ensure_room(settings: Settings, store: JobStore, tenant: str) -> int:
    """The bytes the tenant holds, or a 403 when that is its quota or more (the walk runs off the
    event loop); 0 without a quota (nothing walked)."""
    quota = settings.storage_quota_bytes
    if not quota:
        return 0
    held = await asyncio.to_thread(tenant_bytes, settings, store, tenant)
    if held >= quota:
        message = (f"your uploads and job artifacts take {held:,} bytes, your quota is {quota:,} "
                   "(GPO_STORAGE_QUOTA_BYTES): delete finished jobs or uploads to make room")  # fmt: skip
        raise ApiError(403, "storage_quota", message)
    return held


def delete_job(settings: Settings, store: JobStore, job_id: str) -> None:
    """A finished job's folder, then its records (so a crash in between leaves a record to retry)."""
    shutil.rmtree(settings.artifacts / job_id, ignore_errors=True)
    store.delete(job_id)


def expire_finished_jobs(settings: Settings, store: JobStore, now: float | None = None) -> list[str]:
    """Delete the jobs that ended more than ``GPO_RETENTION_DAYS`` ago; returns their ids."""
    if not settings.retention_days:
        return []
    cutoff = (now if now is not None else time.time()) - settings.retention_days * 86_400
    expired = []
    for index in store.r.scan_iter("gpo:tenant:*:jobs", count=100):
        for job_id in store.r.zrangebyscore(index, 0, cutoff):  # created before the cutoff
            state, updated = store.r.hmget(f"gpo:job:{job_id}", "state", "updated_at")
            if state in TERMINAL and updated is not None and float(updated) < cutoff:
                delete_job(settings, store, job_id)
                expired.append(job_id)
    return expired


def _sweep_if_first(settings: Settings, store: JobStore, every_s: float) -> list[str]:
    """Expire finished jobs unless another control process has this period's lock."""
    if not store.r.set(RETENTION_LOCK, os.getpid(), nx=True, ex=max(1, int(every_s))):
        return []
    return expire_finished_jobs(settings, store)


async def retention_loop(settings: Settings, store: JobStore, every_s: float = 3600.0) -> None:
    """Expire finished jobs every ``every_s``, in one control process at a time (a Redis lock)."""
    logger = service_logger("control")
    while True:
        try:
            expired = await asyncio.to_thread(_sweep_if_first, settings, store, every_s)
            if expired:
                log(logger, logging.INFO, "artifacts expired", jobs=len(expired), days=settings.retention_days)
        except redis.RedisError as err:
            log(logger, logging.WARNING, "retention sweep skipped: redis unreachable", error=str(err))
        await asyncio.sleep(every_s)
