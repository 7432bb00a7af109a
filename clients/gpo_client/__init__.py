"""Python SDK for the GPO control service (HTTP only) and the ``gpo`` command line."""

from gpo_client.sdk import (
    ApiError,
    AsyncClient,
    Client,
    Conflict,
    InvalidSpec,
    NotFound,
    TooManyRequests,
    Unauthorized,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "InvalidSpec",
    "NotFound",
    "TooManyRequests",
    "Unauthorized",
]
