"""Judge endpoints (OpenAI-compatible URLs): what a URL may be, and the client's errors as ours:
what another attempt may fix and what it cannot. Torch-free: the services' settings read it."""

from __future__ import annotations

import contextlib

from gpo_core.errors import GPOError, InputError


class JudgeEndpointError(GPOError):
    """The judge endpoint could not give an answer (unreachable, timed out, a server error):
    another attempt later may succeed. The message names the endpoint and the HTTP status only,
    never what the server sent back."""


class JudgeEndpointRefused(InputError):
    """The judge endpoint refused the request (HTTP 4xx other than 408 and 429: a wrong model name,
    URL or key); retrying cannot help."""


def endpoint_url(url: str) -> str:
    """``url`` normalized (no trailing slash) if it is a plain http(s) URL with a host: no
    credentials, query or fragment (a key belongs in the server's configuration, not a URL)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as err:
        raise ValueError(f"not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry credentials, a query or a fragment")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


@contextlib.contextmanager
def endpoint_errors(base_url: str, model: str, timeout: float):
    """The client's errors as ours: what another attempt may fix (:class:`JudgeEndpointError`) and
    what it cannot (:class:`JudgeEndpointRefused`). The message names the URL and the HTTP status
    only: the body is the server's, not the tenant's to read."""
    from openai import APIConnectionError, APIStatusError, APITimeoutError

    try:
        yield
    except APITimeoutError:
        raise JudgeEndpointError(f"the judge endpoint {base_url} timed out ({timeout:g} s)") from None
    except APIConnectionError:
        raise JudgeEndpointError(f"could not connect to the judge endpoint {base_url}") from None
    except APIStatusError as err:
        status = err.status_code
        if status in (408, 429) or status >= 500:
            raise JudgeEndpointError(f"the judge endpoint {base_url} answered HTTP {status}") from None
        raise JudgeEndpointRefused(
            f"the judge endpoint {base_url} refused the request with HTTP {status} "
            f"(check the judge's base_url, model ({model!r}) and key)"
        ) from None
