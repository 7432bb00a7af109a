"""The HTTP server under the control service: uvicorn, with the request head bounded in size and
in time.

uvicorn's httptools protocol keeps a request's head in memory however large it grows (a 64 MB
header was read for 6 s and held 63 MB), and waits for it forever (3,000 idle or trickling
connections were held open); its h11 protocol has a size limit, but is several times slower.
:class:`BoundedHttpToolsProtocol` counts the head's bytes as they arrive, before they are parsed
(whatever the chunking: a head just over the cap in one read is refused too), and answers 431 once
they pass ``GPO_MAX_HEADER_BYTES``; a connection that has not delivered a whole head within
``GPO_HEADER_TIMEOUT_S`` of opening or of its head's first byte is answered 408 and closed (idle
kept-alive connections are closed by uvicorn after ``timeout_keep_alive``). Bodies are bounded in
size and time by the app (``app.BodyLimit``)."""

from __future__ import annotations

import asyncio
import json

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gpo_services.common.settings import Settings


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024  # set per server by :func:`server_config`
    head_timeout_s = 10.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head, self._head_bytes = True, 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._arm()
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4  # the head's bytes, not a body's
            if self._head_bytes > self.max_head_bytes:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    "too_large",
                    f"request head over {self.max_head_bytes} bytes",
                )
                return
        super().data_received(data)  # may complete the head (and a body) in this chunk

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(408, "Request Timeout", "timeout", f"no request head within {self.head_timeout_s:g} s")

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps({"error": code, "message": message, "details": []}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason.encode(), len(body), body)
        )
        self.transport.close()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes = True, 0  # a kept-alive connection's next request
        super().on_message_complete()


def server_config(app, settings: Settings, **options) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` (an app, or an import string with ``factory=True``)."""
    limits = {"max_head_bytes": settings.max_header_bytes, "head_timeout_s": settings.header_timeout_s}
    protocol = type("HttpProtocol", (BoundedHttpToolsProtocol,), limits)
    return uvicorn.Config(
        app, http=protocol, h11_max_incomplete_event_size=settings.max_header_bytes, log_level="warning", **options
    )
