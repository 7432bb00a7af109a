"""FastAPI dependencies: settings, the job store and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from gpo_services.common.settings import Settings
from gpo_services.common.store import JobStore
from gpo_services.control.errors import ApiError
from gpo_services.control.security import tenant_for


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_tenant(
    request: Request, authorization: Annotated[str | None, Header(description="Bearer API key")] = None
) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    tenant = tenant_for(request.app.state.settings.api_keys, key.strip()) if scheme.lower() == "bearer" else None
    if tenant is None:
        raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>")
    return tenant


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
TenantDep = Annotated[str, Depends(get_tenant)]
