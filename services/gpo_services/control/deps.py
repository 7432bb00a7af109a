"""FastAPI dependencies: settings, the job store and the caller's tenant (authenticated, and counted
against its request rate). They are coroutines: FastAPI would run plain functions in its thread
pool, one thread hop each."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Depends, Header, Request

from gpo_services.common.queue import tenant_tag
from gpo_services.common.settings import Settings
from gpo_services.common.store import AsyncJobStore, JobStore
from gpo_services.control.errors import ApiError
from gpo_services.control.security import tenant_for


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


def bearer_key(request: Request) -> str:
    """The key of the request's one ``Authorization: Bearer KEY`` header ("" without one); a 400
    for several (which one would count is ambiguous)."""
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:
        raise ApiError(400, "bad_request", "send one Authorization header, not several")
    scheme, _, key = (headers[0] if headers else "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


async def get_tenant(
    request: Request, authorization: Annotated[str | None, Header(description="Bearer API key")] = None
) -> str:
    tenant = tenant_for(request.app.state.settings.api_keys, bearer_key(request))
    if tenant is None:
        raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>")
    await _within_rate(request, tenant)
    return tenant


async def _within_rate(request: Request, tenant: str) -> None:
    """At most ``GPO_RATE_LIMIT_PER_MINUTE`` requests per tenant and clock minute (a counter per
    minute in Redis, shared by every control process), else a 429 saying when to come back."""
    limit = request.app.state.settings.rate_limit_per_minute
    if not limit:
        return
    now = time.time()
    key = f"gpo:rate:{tenant_tag(tenant)}:{int(now // 60)}"
    async with request.app.state.async_store.r.pipeline(transaction=False) as pipe:
        count, _ = await pipe.incr(key).expire(key, 120).execute()
    if count > limit:
        retry = max(1, math.ceil(60 - now % 60))
        raise ApiError(
            429,
            "rate_limited",
            f"at most {limit} requests a minute; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )


async def get_async_store(request: Request) -> AsyncJobStore:
    return request.app.state.async_store


SettingsDep = Annotated[Settings, Depends(get_settings)]
AsyncStoreDep = Annotated[AsyncJobStore, Depends(get_async_store)]
StoreDep = Annotated[JobStore, Depends(get_store)]
TenantDep = Annotated[str, Depends(get_tenant)]
