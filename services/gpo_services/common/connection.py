"""Redis clients of the services: both retry a pooled connection that Redis closed (a restart)
on a fresh one, with backoff. A small module of its own, so that the control service does not
import the workers' training stack."""

from __future__ import annotations

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from gpo_services.common.settings import Settings

# A pooled connection that Redis closed (a restart) is retried on a fresh one, on both clients
# (the asyncio client does not retry unless told to).
REDIS_OPTIONS = {
    "decode_responses": True,
    "socket_timeout": 15,
    "socket_connect_timeout": 5,
    "health_check_interval": 10,
    "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
}


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.05)


def _options(settings: Settings) -> dict:
    """The clients' options, with Redis's password when it is given apart from the URL."""
    return {**REDIS_OPTIONS, **({"password": settings.redis_password} if settings.redis_password else {})}


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, retry=Retry(_backoff(), 3), **_options(settings))


def connect_async(settings: Settings, max_connections: int | None = None) -> redis.asyncio.Redis:
    """An asyncio client with a pool of its own (``max_connections``: when all are out, a call
    waits for one instead of failing)."""
    if max_connections is None:
        return redis.asyncio.Redis.from_url(settings.redis_url, retry=AsyncRetry(_backoff(), 3), **_options(settings))
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max_connections, timeout=30, **_options(settings)
    )
    return redis.asyncio.Redis(connection_pool=pool, retry=AsyncRetry(_backoff(), 3))
