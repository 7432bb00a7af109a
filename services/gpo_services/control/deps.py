"""FastAPI dependencies: settings, the job store and the caller's tenant. They do no I/O, so they
are coroutines: FastAPI would run plain functions in its thread pool, one thread hop each."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from gpo_services.common.settings import Settings
from gpo_services.common.store import AsyncJobStore, JobStore
from gpo_services.control.errors import ApiError
from gpo_services.control.security import tenant_for


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_tenant(
    request: Request, authorization: Annotated[str | None, Header(description="Bearer API key")] = None
) -> str:
    if len(request.headers.getlist("authorization")) > 1:  # which one would count is ambiguous
        raise ApiError(400, "bad_request", "send one Authorization header, not several")
    scheme, _, key = (authorization or "").partition(" ")
    tenant = tenant_for(request.app.state.settings.api_keys, key.strip()) if scheme.lower() == "bearer" else None
    if tenant is None:
        raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>")
    return tenant


async def get_async_store(request: Request) -> AsyncJobStore:
    return request.app.state.async_store


SettingsDep = Annotated[Settings, Depends(get_settings)]
AsyncStoreDep = Annotated[AsyncJobStore, Depends(get_async_store)]
StoreDep = Annotated[JobStore, Depends(get_store)]
TenantDep = Annotated[str, Depends(get_tenant)]
