"""Tenant-owned models: a transformers model folder uploaded as a tar archive (gzipped or not),
stored per tenant, listed and deleted by its owner, and named in job specs as ``model:NAME``
(``policy``, ``reference``, ``judge.model_dir``).

A model is code's favourite hiding place, so an archive is held to a narrow shape before anything
reads it: regular files only (no links, devices or folders that climb out), at most
``MAX_MEMBERS`` of them, names from a small set of suffixes, weights as safetensors only (a
``.bin``/``.pt`` pickle runs code when loaded), a ``config.json`` without ``auto_map`` (remote code),
and every safetensors header readable. The archive is streamed to disk under
``GPO_MAX_MODEL_UPLOAD_BYTES`` and the tenant's storage quota, extracted beside the tenant's other
models, checked, and only then renamed into place.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel

from gpo_core.models import ADAPTER_BASE_RECORD, write_adapter_base
from gpo_core.specfile import ADAPTER_CONFIG
from gpo_core.sweep.views import ErrorBody
from gpo_services.common.settings import Settings
from gpo_services.control.data import stream_to_file
from gpo_services.control.deps import SettingsDep, TenantDep
from gpo_services.control.errors import ApiError
from gpo_services.control.inputs import MODEL_PREFIX, resolve_path
from gpo_services.control.storage import (
    MODEL_NAME_PATTERN,
    models_folder,
    stored_records,
    upload_room,
    uploaded_model,
)

router = APIRouter(prefix="/models", tags=["models"])
NAME_PATTERN = MODEL_NAME_PATTERN
MAX_MEMBERS = 1000
INFLATION, MIN_UNPACKED = 20, 64 * 2**20
ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".jinja", ".md"}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key"},
    403: {"model": ErrorBody, "description": "The tenant holds its storage quota (GPO_STORAGE_QUOTA_BYTES)"},
    404: {"model": ErrorBody, "description": "No such model for this tenant"},
    413: {"model": ErrorBody, "description": "Larger than GPO_MAX_MODEL_UPLOAD_BYTES"},
    422: {"model": ErrorBody, "description": "Not an acceptable model archive; the message names the file"},
    429: {"model": ErrorBody, "description": "Over the tenant's request rate; Retry-After says when to retry"},
}
ModelName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="Letters, digits, _ . -")]


class Model(BaseModel):
    name: str
    bytes: int  # of the archive as uploaded
    sha256: str  # of the archive as uploaded
    files: list[str]
    model_type: str
    parameters: int  # counted from the safetensors headers
    uploaded_at: float
    reference: str  # what a job spec names it by: model:NAME


def _refuse(message: str) -> ApiError:
    return ApiError(422, "invalid_model", message)


def _checked_members(archive: tarfile.TarFile, limit: int) -> list[tarfile.TarInfo]:
    """The archive's files, if every member is a plain file or folder with an allowed name."""
    members, total = [], 0
    for number, member in enumerate(archive, start=1):
        if number > MAX_MEMBERS:
            raise _refuse(f"the archive has more than {MAX_MEMBERS} members")
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or "\\" in member.name:
            raise _refuse(f"{member.name}: a path outside the model folder")
        if member.isdir():
            continue
        if not member.isreg():
            raise _refuse(f"{member.name}: only regular files are accepted (no links or devices)")
        if name.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"):
            raise _refuse(f"{member.name}: weights must be safetensors (pickle files can run code when loaded)")
        if name.suffix not in ALLOWED_SUFFIXES:
            raise _refuse(f"{member.name}: not a model file (accepted: {', '.join(sorted(ALLOWED_SUFFIXES))})")
        total += member.size
        if total > limit:
            raise _refuse(f"the archive's files are larger than {limit} bytes once extracted")
        members.append(member)
    return members


def _model_root(files: list[PurePosixPath]) -> PurePosixPath:
    """The folder holding config.json: the archive's top level, or its one top folder."""
    configs = [f.parent for f in files if f.name == "config.json"]
    if len(configs) != 1:
        raise _refuse("the archive must hold exactly one config.json (a transformers model folder)")
    return configs[0]


def _parameters(path: Path) -> int:
    from safetensors import safe_open

    count = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - a safetensors handle is not a dict
            shape = handle.get_slice(key).get_shape()
            numel = 1
            for size in shape:
                numel *= size
            count += numel
    return count


PATH_KEYS = ("_name_or_path", "name_or_path")  # where a model's files came from on its author's machine


def _no_path_followed(work: Path, resolve_base: Callable[[str], Path | None]) -> None:
    """No path inside the upload is ever followed. Path-valued fields of its JSON files (a config's
    ``_name_or_path``, a tokenizer's ``*_file``) are dropped: every file is read from the folder
    itself. An adapter's base (``base_model_name_or_path``) is resolved with this tenant's rights
    (``model:NAME`` or a path under the operator's read roots) and recorded by the platform in
    :data:`ADAPTER_BASE_RECORD`, which workers read instead; an upload that carries that file, or
    names a base it may not read, is refused (a missing and a forbidden base get the same answer)."""
    for path in sorted(work.rglob("*.json")):
        member = path.relative_to(work)
        if path.name == ADAPTER_BASE_RECORD:
            raise _refuse(f"{member}: a file name this platform keeps for itself")
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _refuse(f"{member}: not valid JSON ({err})") from None
        if not isinstance(content, dict) or path.name == ADAPTER_CONFIG:
            continue
        paths = [k for k, v in content.items() if k in PATH_KEYS or (k.endswith("_file") and isinstance(v, str))]
        if paths:
            kept = {k: v for k, v in content.items() if k not in paths}
            path.write_text(json.dumps(kept, indent=2), encoding="utf-8")
    adapter = work / ADAPTER_CONFIG
    if not adapter.is_file():
        return
    named = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
    base = resolve_base(named) if isinstance(named, str) else None
    if base is None:
        raise _refuse(f"{ADAPTER_CONFIG}: base_model_name_or_path must name one of your models (model:NAME) or a "
                      f"model under the operator's read roots; {str(named)[:200]!r} is not one")  # fmt: skip
    write_adapter_base(work, base)


def _unpack(
    archive_path: Path, work: Path, name: str, limit: int, resolve_base: Callable[[str], Path | None]
) -> tuple[list[str], str, int]:
    """Extract the checked archive into ``work`` and check the model there: (files, type, params)."""
    try:
        with tarfile.open(archive_path, mode="r:*") as archive:
            members = _checked_members(archive, limit)
            root = _model_root([PurePosixPath(m.name) for m in members])
            for member in members:
                relative = PurePosixPath(member.name).relative_to(root) if root.parts else PurePosixPath(member.name)
                target = work / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None  # _checked_members keeps regular files only
                with source, target.open("wb") as handle:
                    shutil.copyfileobj(source, handle)
    except tarfile.TarError as err:
        raise _refuse(f"{name}: not a readable tar archive ({err})") from None
    try:
        config = json.loads((work / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _refuse(f"config.json: not valid JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise _refuse("config.json: no model_type (not a transformers model config)")
    if "auto_map" in config:
        raise _refuse("config.json: auto_map asks for the model's own code, which is not run here")
    _no_path_followed(work, resolve_base)
    weights = sorted(work.rglob("*.safetensors"))
    if not weights:
        raise _refuse("no .safetensors weights in the archive")
    parameters = 0
    for path in weights:
        try:
            parameters += _parameters(path)
        except Exception as err:  # safetensors raises several types for a damaged header
            raise _refuse(f"{path.relative_to(work)}: not a readable safetensors file ({err})") from None
    files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    return files, config["model_type"], parameters


@router.put(
    "/{name}",
    status_code=201,
    response_model=Model,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_model(name: ModelName, request: Request, settings: SettingsDep, tenant: TenantDep) -> Model:
    """Store the request body, a tar archive (gzipped or not) of a transformers model folder, as
    this tenant's model ``name``, replacing an earlier one of that name once the new one is valid."""
    async with upload_room(settings, request.app.state.store, tenant) as held:
        folder = models_folder(settings, tenant)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        archive, work = folder / f".part-{token}.tar", folder / f".work-{token}"
        try:
            size, sha256 = await stream_to_file(request, archive, settings.max_model_upload_bytes, settings, held)
            if size == 0:
                raise _refuse(f"{name}: the upload is empty")
            # A tar bomb stops here: weights barely compress (safetensors ~1.1x, tokenizer files ~5x), so
            # an archive may unpack to 20x its size (at least 64 MiB), within twice the upload limit.
            extracted = min(2 * settings.max_model_upload_bytes, max(MIN_UNPACKED, INFLATION * size))
            if settings.storage_quota_bytes:
                extracted = min(extracted, settings.storage_quota_bytes - held - size)
            base = functools.partial(adapter_base_for, tenant=tenant, settings=settings)
            files, model_type, parameters = await asyncio.to_thread(_unpack, archive, work, name, extracted, base)
            record = Model(name=name, bytes=size, sha256=sha256, files=files, model_type=model_type,
                           parameters=parameters, uploaded_at=time.time(), reference=f"model:{name}")  # fmt: skip
            await asyncio.to_thread(_install, folder, work, name, record)
            return record
        finally:
            archive.unlink(missing_ok=True)
            await asyncio.to_thread(shutil.rmtree, work, True)


def adapter_base_for(value: str, tenant: str, settings: Settings) -> Path | None:
    """The model folder an uploaded adapter's base names, read with ``tenant``'s rights, or None."""
    if not (value.startswith(MODEL_PREFIX) or os.path.isabs(value)):
        return None
    found = resolve_path(value, tenant, settings)
    return Path(found) if found is not None and (Path(found) / "config.json").is_file() else None


def _install(folder: Path, work: Path, name: str, record: Model) -> None:
    """Put the checked model in place of any earlier one of that name, then its record."""
    final, old = folder / name, folder / f".old-{uuid.uuid4().hex}"
    (folder / f".{name}.json").unlink(missing_ok=True)  # an earlier one is no longer usable
    if final.exists():
        final.rename(old)
    work.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    (folder / f".{name}.json").write_text(record.model_dump_json(), encoding="utf-8")


@router.get("", response_model=list[Model], responses={401: ERRORS[401], 429: ERRORS[429]})
async def list_models(settings: SettingsDep, tenant: TenantDep) -> list[Model]:
    """This tenant's models, by name."""
    present = lambda name: uploaded_model(settings, tenant, name) is not None  # noqa: E731
    return stored_records(models_folder(settings, tenant), Model, present)


@router.delete("/{name}", status_code=204, responses=ERRORS)
async def delete_model(name: ModelName, settings: SettingsDep, tenant: TenantDep) -> Response:
    """Delete this tenant's model ``name``. A queued job that names it fails with a message saying so."""
    path = uploaded_model(settings, tenant, name)
    if path is None:
        raise ApiError(404, "not_found", f"no model {name}")
    (path.parent / f".{name}.json").unlink(missing_ok=True)
    await asyncio.to_thread(shutil.rmtree, path, True)
    return Response(status_code=204)
