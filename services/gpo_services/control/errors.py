"""Every error is JSON: ``{"error": code, "message": ..., "details": [{"field", "message"}]}``."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpo_core.sweep.views import ErrorBody


def documented(description: str) -> dict[str, Any]:
    """An error answer as the OpenAPI document shows it."""
    return {"model": ErrorBody, "description": description}


# The answers every route of a tenant may give, written once for the document.
UNAUTHORIZED = documented("Missing or wrong API key")
RATE_LIMITED = documented("Over the tenant's request rate; Retry-After says when to retry")
STORAGE_QUOTA = documented("The tenant holds its storage quota (GPO_STORAGE_QUOTA_BYTES)")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: list[dict] | None = None, headers: dict | None = None
    ):
        self.status, self.code, self.message, self.details = status, code, message, details or []
        self.headers = headers or {}


class BodyTimeout(Exception):
    """A request body (an upload's next chunk) did not arrive in time."""

    def __init__(self, timeout_s: float):
        super().__init__(f"the request body did not arrive within {timeout_s:g} s")


def error_response(status: int, code: str, message: str, details: list[dict] | None = None, headers=None):
    body = ErrorBody(error=code, message=message, details=details or [])
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    headers = {**exc.headers, **({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {})}
    return error_response(exc.status, exc.code, exc.message, exc.details, headers or None)


def invalid(problems: list[dict], code: str = "invalid_request") -> ApiError:
    """A 422 naming each bad field, from pydantic's errors (``loc``, ``msg``)."""
    details: list[dict[str, str | None]] = []
    for problem in problems:
        if problem.get("type") == "json_invalid":  # its location is a byte offset, not a field
            reason = (problem.get("ctx") or {}).get("error", "invalid JSON")
            offset = problem.get("loc", (None, None))[-1]
            details.append({"field": None, "message": f"the body is not valid JSON: {reason} (at byte {offset})"})
            continue
        if tuple(problem.get("loc", ())) == ("body",) and problem.get("type") in ("dict_type", "missing"):
            message = "the body must be a JSON object" if problem["type"] == "dict_type" else "the request has no body"
            details.append({"field": None, "message": message})
            continue
        location = [str(part) for part in problem.get("loc", ())]
        if location and location[0] in ("body", "query", "path", "header"):
            location = location[1:] if location[0] == "body" else location
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        details.append({"field": ".".join(location) or None, "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" if d["field"] else str(d["message"]) for d in details[:5])
    return ApiError(422, code, summary or "invalid request", details)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    error = invalid(list(exc.errors()))
    return error_response(error.status, error.code, error.message, error.details)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # the framework could not read the body: as every invalid request, a 422
        return error_response(422, "invalid_request", f"the body could not be read: {exc.detail}")
    codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
    return error_response(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail))


async def body_timeout(request: Request, exc: BodyTimeout) -> JSONResponse:
    return error_response(408, "timeout", str(exc), headers={"Connection": "close"})


async def redis_error(request: Request, exc: Exception) -> JSONResponse:
    """Redis away (a restart, a network split): the request may be retried; nothing was lost."""
    return error_response(
        503, "unavailable", "the job store is unreachable; retry shortly", headers={"Retry-After": "2"}
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, "internal", "internal error; the service log has the details")
