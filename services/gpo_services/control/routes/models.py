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
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel

from gpo_core.sweep.views import ErrorBody
from gpo_services.common.settings import Settings
from gpo_services.control.archives import INFLATION, MIN_UNPACKED, unpack_model
from gpo_services.control.deps import SettingsDep, TenantDep
from gpo_services.control.errors import RATE_LIMITED, STORAGE_QUOTA, UNAUTHORIZED, ApiError
from gpo_services.control.inputs import MODEL_PREFIX, resolve_path
from gpo_services.control.storage import (
    MODEL_NAME_PATTERN,
    install_model,
    models_folder,
    stored_records,
    stream_to_file,
    upload_room,
    uploaded_model,
)

router = APIRouter(prefix="/models", tags=["models"])
NAME_PATTERN = MODEL_NAME_PATTERN
ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    403: STORAGE_QUOTA,
    404: {"model": ErrorBody, "description": "No such model for this tenant"},
    413: {"model": ErrorBody, "description": "Larger than GPO_MAX_MODEL_UPLOAD_BYTES"},
    422: {"model": ErrorBody, "description": "Not an acceptable model archive; the message names the file"},
    429: RATE_LIMITED,
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
                raise ApiError(422, "invalid_model", f"{name}: the upload is empty")
            # A tar bomb stops here: weights barely compress (safetensors ~1.1x, tokenizer files ~5x), so
            # an archive may unpack to 20x its size (at least 64 MiB), within twice the upload limit.
            extracted = min(2 * settings.max_model_upload_bytes, max(MIN_UNPACKED, INFLATION * size))
            if settings.storage_quota_bytes:
                extracted = min(extracted, settings.storage_quota_bytes - held - size)
            base = functools.partial(adapter_base_for, tenant=tenant, settings=settings)
            files, model_type, parameters = await asyncio.to_thread(unpack_model, archive, work, name, extracted, base)
            record = Model(
                name=name,
                bytes=size,
                sha256=sha256,
                files=files,
                model_type=model_type,
                parameters=parameters,
                uploaded_at=time.time(),
                reference=f"model:{name}",
            )
            await asyncio.to_thread(install_model, folder, work, name, record.model_dump_json())
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
