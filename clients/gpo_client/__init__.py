"""Python SDK for the GPO control service (HTTP only) and the ``gpo`` command line.

The SDK's names are imported on first use, so that ``gpo`` starts without loading the SDK's HTTP
client (and commands that never talk to a server never do)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
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


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module("gpo_client.sdk"), name)
    raise AttributeError(f"module 'gpo_client' has no attribute {name!r}")
