"""Each tenant's share of the artifact volume: its uploads and its jobs' folders, bounded by
``GPO_STORAGE_QUOTA_BYTES``; and how long a finished job's artifacts are kept
(``GPO_RETENTION_DAYS``). A tenant over its quota can still read and delete, but cannot upload or
submit until it has made room (``DELETE /jobs/{id}``, ``DELETE /data/{name}``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import redis
from fastapi import Request
from pydantic import BaseModel

from gpo_core.sweep.spec import PATH_FIELDS
from gpo_core.sweep.views import TERMINAL
from gpo_services.common.logs import log, service_logger
from gpo_services.common.settings import Settings
from gpo_services.common.store import JobStore
from gpo_services.control.errors import ApiError

T = TypeVar("T", bound=BaseModel)
RETENTION_LOCK = "gpo:retention:lock"
UPLOADS = ".uploads"  # inside the artifact root (a volume every service shares); job ids are hex


TENANT_INDEX = ".tenants"  # in the uploads folder: tenant (by hash) -> the random name of its folder
DATA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}\.(jsonl|parquet)$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


def tenant_folder(settings: Settings, tenant: str) -> Path:
    """The tenant's upload folder, named by a random id that an index file maps the tenant to: no
    tenant name ever becomes a path, and no folder name can be worked out from a tenant's name.
    (A folder made before random ids, named by the tenant's hash, stays where it is.)"""
    root = settings.artifacts / UPLOADS
    hashed = hashlib.sha256(tenant.encode()).hexdigest()
    index = root / TENANT_INDEX / hashed
    if index.is_file():
        return root / index.read_text(encoding="utf-8").strip()
    index.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    legacy = hashed[:24]
    name = legacy if (root / legacy).is_dir() else secrets.token_hex(16)
    staged = index.with_name(f".{hashed}.{secrets.token_hex(4)}")
    staged.write_text(name, encoding="utf-8")
    try:
        os.link(staged, index)  # atomic: of two processes naming a new tenant, the first one wins
    except FileExistsError:
        name = index.read_text(encoding="utf-8").strip()
    finally:
        staged.unlink(missing_ok=True)
    return root / name


def uploaded_file(settings: Settings, tenant: str, name: str) -> Path | None:
    """The tenant's data upload ``name`` (a plain file, no link), or None."""
    if not re.fullmatch(DATA_NAME_PATTERN, name):
        return None
    path = tenant_folder(settings, tenant) / name
    return path if path.is_file() and not path.is_symlink() else None


def models_folder(settings: Settings, tenant: str) -> Path:
    return tenant_folder(settings, tenant) / "models"


def uploaded_model(settings: Settings, tenant: str, name: str) -> Path | None:
    """The tenant's model folder ``name`` (complete: its record exists), or None."""
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        return None
    folder = models_folder(settings, tenant)
    path = folder / name
    if path.is_dir() and not path.is_symlink() and (folder / f".{name}.json").is_file():
        return path
    return None


def upload_names(settings: Settings, tenant: str, models: bool) -> list[str]:
    """The names of the tenant's own data uploads (or models): what a did-you-mean may suggest."""
    folder = models_folder(settings, tenant) if models else tenant_folder(settings, tenant)
    found = uploaded_model if models else uploaded_file
    names = [meta.name[1:].removesuffix(".json") for meta in folder.glob(".*.json")] if folder.exists() else []
    return sorted(name for name in names if found(settings, tenant, name) is not None)


def stored_records(folder: Path, record_type: type[T], present: Callable[[str], bool]) -> list[T]:
    """The records kept beside stored items (``.NAME.json``), by name, for items still present."""
    records = []
    for meta in sorted(folder.glob(".*.json")) if folder.exists() else []:
        record = record_type.model_validate(json.loads(meta.read_text(encoding="utf-8")))
        if present(getattr(record, "name")):  # noqa: B009 (every stored record has a name)
            records.append(record)
    return records


ADMITTED = ".admitted"  # in a tenant's folder: the upload bytes each job was admitted with


def admitted(settings: Settings, tenant: str, path: Path) -> Path:
    """Upload ``path`` (a data file or a model folder) as a job admitted now will read it, whatever
    happens to the upload later: its files hard-linked under the tenant's ``.admitted`` folder,
    named by the upload's content digest. A later upload of the same name replaces the files, not
    their bytes, so a queued job reads exactly what it was admitted (and counted) with; links
    take no space twice (``folder_bytes`` counts a file once)."""
    record = path.parent / f".{path.name}.json"
    for _ in range(5):  # an upload of the same name may land meanwhile: link again
        before = path.stat().st_ino
        digest = json.loads(record.read_text(encoding="utf-8"))["sha256"]
        folder = tenant_folder(settings, tenant) / ADMITTED
        folder.mkdir(exist_ok=True)
        staged = folder / f".staged-{secrets.token_hex(8)}"
        try:
            if path.is_dir():
                for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                    (staged / file.relative_to(path)).parent.mkdir(parents=True, exist_ok=True)
                    os.link(file, staged / file.relative_to(path))
            else:
                os.link(path, staged)
            if path.stat().st_ino != before:
                continue
            final = folder / (digest[:32] + path.suffix if path.is_file() else f"model-{digest[:32]}")
            if not final.exists():
                os.replace(staged, final) if path.is_file() else staged.rename(final)
            return final
        finally:
            shutil.rmtree(staged, ignore_errors=True) if staged.is_dir() else staged.unlink(missing_ok=True)
    raise ApiError(409, "conflict", f"{path.name} is being replaced again and again: submit once it is uploaded")


def release_admitted(settings: Settings, store: JobStore, tenant: str, paths: list[str]) -> None:
    """Remove the admitted copies among ``paths`` that no job of ``tenant`` names any more."""
    folder = tenant_folder(settings, tenant) / ADMITTED
    mine = [Path(p) for p in paths if Path(p).parent == folder]
    if not mine:
        return
    named = set()
    for job_id in store.r.zrange(f"gpo:tenant:{tenant}:jobs", 0, -1):
        if (spec := store.r.hget(f"gpo:job:{job_id}", "spec")) is not None:
            named.update(spec_paths(json.loads(spec)))
    for path in mine:
        if str(path) not in named:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def spec_paths(spec: dict) -> list[str]:
    """Every path a stored job spec names (the job spec's ``PATH_FIELDS``)."""
    values = []
    for field in PATH_FIELDS:
        holder, _, name = field.rpartition(".")
        values.append((spec.get(holder) or {} if holder else spec).get(name))
    return [v for v in values if isinstance(v, str)]


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed; a file with several hard
    links counted once)."""
    total, folders, seen = 0, [path], set()
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                if stat.st_nlink > 1:
                    if (stat.st_dev, stat.st_ino) in seen:
                        continue
                    seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
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
        message = (
            f"your uploads and job artifacts take {held:,} bytes, your quota is {quota:,} "
            "(GPO_STORAGE_QUOTA_BYTES): delete finished jobs or uploads to make room"
        )
        raise ApiError(403, "storage_quota", message)
    return held


RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
LOCK_S = 30  # the upload lock's lease, renewed every third of it while the upload lasts


@contextlib.asynccontextmanager
async def upload_room(settings: Settings, store: JobStore, tenant: str) -> AsyncIterator[int]:
    """The bytes the tenant holds (see :func:`ensure_room`), for one of its uploads at a time when a
    storage quota is set: concurrent uploads of a tenant take turns (a lease in Redis, shared by
    every control process), so two of them cannot both fit in the same room, and each is checked
    against the quota as its bytes arrive. A 429 when another upload of the tenant holds the turn
    for longer than ``GPO_BODY_TIMEOUT_S``."""
    if not settings.storage_quota_bytes:
        yield 0
        return
    key, token = f"gpo:tenant:{tenant}:upload-turn", secrets.token_hex(8)
    deadline = time.monotonic() + settings.body_timeout_s
    while not await asyncio.to_thread(store.r.set, key, token, nx=True, ex=LOCK_S):
        if time.monotonic() > deadline:
            raise ApiError(
                429,
                "busy",
                "another upload of yours is still arriving; retry when it is done",
                headers={"Retry-After": "5"},
            )
        await asyncio.sleep(0.1)

    async def renew() -> None:
        while True:
            await asyncio.sleep(LOCK_S / 3)
            await asyncio.to_thread(store.r.expire, key, LOCK_S)

    renewing = asyncio.create_task(renew())
    try:
        yield await ensure_room(settings, store, tenant)
    finally:
        renewing.cancel()
        await asyncio.to_thread(store.r.eval, RELEASE, 1, key, token)


def delete_job(settings: Settings, store: JobStore, job_id: str) -> None:
    """A finished job's folder, then its records (so a crash in between leaves a record to retry),
    then the admitted uploads no other job of its tenant names."""
    tenant, spec = store.tenant(job_id), store.r.hget(f"gpo:job:{job_id}", "spec")
    shutil.rmtree(settings.artifacts / job_id, ignore_errors=True)
    store.delete(job_id)
    if tenant is not None and spec is not None:
        release_admitted(settings, store, tenant, spec_paths(json.loads(spec)))


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


async def stream_to_file(request: Request, path: Path, limit: int, settings: Settings, held: int) -> tuple[int, str]:
    """The request body written to ``path`` as it arrives: (bytes, SHA-256). A 413 past ``limit``,
    a 403 past the tenant's storage quota (``held`` bytes already); the caller removes ``path``."""
    digest, size = hashlib.sha256(), 0
    room = settings.storage_quota_bytes - held if settings.storage_quota_bytes else None
    with path.open("wb") as handle:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"uploads here are at most {limit} bytes")
            if room is not None and size > room:
                raise ApiError(
                    403,
                    "storage_quota",
                    f"this upload would take you past your storage quota of "
                    f"{settings.storage_quota_bytes:,} bytes (GPO_STORAGE_QUOTA_BYTES)",
                )
            digest.update(chunk)
            await asyncio.to_thread(handle.write, chunk)
    return size, digest.hexdigest()


def upload_records(settings: Settings, path: str) -> int | None:
    """The records of the upload at ``path``, as counted when it was validated (no re-reading of
    the file); None when ``path`` is not an upload."""
    file = Path(path)
    meta = file.parent / f".{file.name}.json"
    if not file.is_relative_to(settings.artifacts / UPLOADS) or not meta.is_file():
        return None
    return int(json.loads(meta.read_text(encoding="utf-8"))["records"])


def install_model(folder: Path, work: Path, name: str, record: str) -> None:
    """Put the checked model (``work``) in place of any earlier one of that name, then its record (JSON)."""
    final, old = folder / name, folder / f".old-{uuid.uuid4().hex}"
    (folder / f".{name}.json").unlink(missing_ok=True)  # an earlier one is no longer usable
    if final.exists():
        final.rename(old)
    work.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    (folder / f".{name}.json").write_text(record, encoding="utf-8")
