"""Tenant-owned data: preference pairs and prompt sets uploaded through the API, stored per
tenant, listed and deleted by their owner, and named in job specs as ``data:NAME``.

An upload is streamed to disk (never held in memory), counted against ``GPO_MAX_UPLOAD_BYTES``,
hashed (SHA-256) on the way, validated as what it claims to be (pairs or prompts, with the line
that is wrong), and only then renamed into place: a refused upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel

from gpo_core.sweep.views import ErrorBody
from gpo_services.control.deps import SettingsDep, TenantDep
from gpo_services.control.errors import RATE_LIMITED, STORAGE_QUOTA, UNAUTHORIZED, ApiError
from gpo_services.control.storage import (
    DATA_NAME_PATTERN,
    stored_records,
    stream_to_file,
    tenant_folder,
    upload_room,
    uploaded_file,
)

router = APIRouter(prefix="/data", tags=["data"])
NAME_PATTERN = DATA_NAME_PATTERN
ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    403: STORAGE_QUOTA,
    404: {"model": ErrorBody, "description": "No such upload for this tenant"},
    413: {"model": ErrorBody, "description": "Larger than GPO_MAX_UPLOAD_BYTES"},
    422: {"model": ErrorBody, "description": "Not valid pairs or prompts; the message names the line"},
    429: RATE_LIMITED,
}
UploadName = Annotated[
    str, PathParam(pattern=NAME_PATTERN, description="File name: letters, digits, _ -; .jsonl or .parquet")
]


class Upload(BaseModel):
    name: str
    kind: Literal["pairs", "prompts"]
    bytes: int
    sha256: str
    records: int
    uploaded_at: float
    reference: str  # what a job spec names it by: data:NAME


@router.put(
    "/{name}",
    status_code=201,
    response_model=Upload,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload(
    name: UploadName,
    request: Request,
    settings: SettingsDep,
    tenant: TenantDep,
    kind: Annotated[Literal["pairs", "prompts"], Query(description="What the file holds")] = "pairs",
) -> Upload:
    """Store the request body (the file's bytes) as this tenant's upload ``name``, replacing an
    earlier one of that name once the new one is valid."""
    async with upload_room(settings, request.app.state.store, tenant) as held:
        folder = tenant_folder(settings, tenant)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        partial = folder / f".part-{uuid.uuid4().hex}-{name}"  # the suffix tells the format
        try:
            size, sha256 = await stream_to_file(request, partial, settings.max_upload_bytes, settings, held)
            if size == 0:
                raise ApiError(422, "invalid_data", f"{name}: the upload is empty")
            try:  # read in a limited child: a small Parquet file can inflate to gigabytes
                records = await request.app.state.tenant_checks.count_upload(
                    str(partial),
                    kind,
                    name,
                    tenant,
                    settings.upload_check_timeout_s,
                    settings.upload_check_memory_bytes,
                )
            except ValueError as err:
                raise ApiError(422, "invalid_data", str(err)) from None
            record = Upload(
                name=name,
                kind=kind,
                bytes=size,
                sha256=sha256,
                records=records,
                uploaded_at=time.time(),
                reference=f"data:{name}",
            )
            os.replace(partial, folder / name)
            (folder / f".{name}.json").write_text(record.model_dump_json(), encoding="utf-8")
            return record
        finally:
            partial.unlink(missing_ok=True)


@router.get("", response_model=list[Upload], responses={401: ERRORS[401], 429: ERRORS[429]})
async def list_uploads(settings: SettingsDep, tenant: TenantDep) -> list[Upload]:
    """This tenant's uploads, by name."""
    present = lambda name: uploaded_file(settings, tenant, name) is not None  # noqa: E731
    return stored_records(tenant_folder(settings, tenant), Upload, present)


@router.delete("/{name}", status_code=204, responses=ERRORS)
async def delete_upload(name: UploadName, settings: SettingsDep, tenant: TenantDep) -> Response:
    """Delete this tenant's upload ``name``. Jobs read their data when they run: a queued job that
    names a deleted upload fails with a message saying so."""
    path = uploaded_file(settings, tenant, name)
    if path is None:
        raise ApiError(404, "not_found", f"no upload {name}")
    path.unlink()
    (path.parent / f".{name}.json").unlink(missing_ok=True)
    return Response(status_code=204)
