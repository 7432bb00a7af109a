"""A tenant's own secrets (``/secrets``): an API key for its endpoint judge, stored write-only.

``PUT /secrets/NAME`` stores the request body (the key itself, at most 4 KiB of text); a job spec
names it as ``judge.api_key_secret: NAME``. No endpoint returns a secret's value (``GET /secrets``
lists names), and the judge worker hands it to the task's child in its payload, never in logs,
events or artifacts (:mod:`gpo_services.common.credentials`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam

from gpo_core.sweep.views import ErrorBody
from gpo_services.control.deps import StoreDep, TenantDep
from gpo_services.control.errors import RATE_LIMITED, UNAUTHORIZED, ApiError

router = APIRouter(prefix="/secrets", tags=["secrets"])
MAX_SECRET_BYTES = 4096
MAX_SECRETS = 64  # per tenant
SecretName = Annotated[
    str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="Letters, digits, _ . -")
]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    404: {"model": ErrorBody, "description": "No such secret for this tenant"},
    422: {"model": ErrorBody, "description": "Not a usable secret (empty, not text, too long, too many)"},
    429: RATE_LIMITED,
}


@router.put(
    "/{name}",
    status_code=204,
    responses=ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def put_secret(name: SecretName, request: Request, store: StoreDep, tenant: TenantDep) -> Response:
    """Store (or replace) this tenant's secret ``name``: the body, as text."""
    body = await request.body()
    try:
        value = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ApiError(422, "invalid_secret", f"secret {name}: not UTF-8 text") from None
    if not value or len(body) > MAX_SECRET_BYTES or any(c in value for c in "\r\n\x00"):
        raise ApiError(422, "invalid_secret", f"secret {name}: one line of 1 to {MAX_SECRET_BYTES} bytes of text")
    names = store.secret_names(tenant)
    if name not in names and len(names) >= MAX_SECRETS:
        raise ApiError(422, "invalid_secret", f"at most {MAX_SECRETS} secrets: delete one first")
    store.set_secret(tenant, name, value)
    return Response(status_code=204)


@router.get("", response_model=list[str], responses={401: ERRORS[401], 429: ERRORS[429]})
async def list_secrets(store: StoreDep, tenant: TenantDep) -> list[str]:
    """The names of this tenant's secrets (never their values)."""
    return store.secret_names(tenant)


@router.delete("/{name}", status_code=204, responses=ERRORS)
async def delete_secret(name: SecretName, store: StoreDep, tenant: TenantDep) -> Response:
    if not store.delete_secret(tenant, name):
        raise ApiError(404, "not_found", f"no secret {name}")
    return Response(status_code=204)
