"""The HTTP server under the control service: uvicorn, with the request head bounded in size.

uvicorn's httptools protocol keeps a request's head in memory however large it grows (a 64 MB
header was read for 6 s and held 63 MB); its h11 protocol has a limit, but is several times slower.
:class:`BoundedHttpToolsProtocol` counts the bytes received while a head is incomplete and answers
431 once they pass ``GPO_MAX_HEADER_BYTES``. Bodies are bounded in size and time by the app
(``app.BodyLimit``)."""

from __future__ import annotations

import json

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gpo_services.common.settings import Settings


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024  # set per server by :func:`server_config`

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head, self._head_bytes = True, 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)  # may complete the head (and a body) in this chunk
        if self._in_head and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            body = json.dumps({"error": "too_large", "message": f"request head over {self.max_head_bytes} bytes",
                               "details": []}).encode()  # fmt: skip
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes = True, 0  # a kept-alive connection's next request
        super().on_message_complete()


def server_config(app, settings: Settings, **options) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` (an app, or an import string with ``factory=True``)."""
    protocol = type("HttpProtocol", (BoundedHttpToolsProtocol,), {"max_head_bytes": settings.max_header_bytes})
    return uvicorn.Config(app, http=protocol, h11_max_incomplete_event_size=settings.max_header_bytes,
                          log_level="warning", **options)  # fmt: skip
