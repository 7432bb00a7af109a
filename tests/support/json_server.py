"""A real HTTP server on loopback that answers JSON as a script says: the stand-in for a remote
API in tests and benchmarks (a judge endpoint that is slow, rate-limits, or answers in a given
shape). It is a fixture of the world outside, not of our own code."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator

Reply = Callable[[dict, int], tuple[int, dict, dict]]  # (request body, its number) -> (status, headers, JSON)


class Script:
    """What the server answers (``reply``, after ``delay_s``), and what it saw: the request bodies
    and the most requests it had in flight at once."""

    def __init__(self, reply: Reply, delay_s: float = 0.0):
        self.reply, self.delay_s = reply, delay_s
        self.bodies: list[dict] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog (5) would hold concurrent connections back ~1 s


@contextlib.contextmanager
def json_server(script: Script) -> Iterator[str]:
    """Serve ``script`` on a free loopback port; yields the base URL (``http://127.0.0.1:P/v1``)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.bodies.append(body)
                script.authorizations.append(self.headers.get("Authorization"))
                number = len(script.bodies)
                script.in_flight += 1
                script.most_in_flight = max(script.most_in_flight, script.in_flight)
            try:
                time.sleep(script.delay_s)
                status, headers, payload = script.reply(body, number)
            finally:
                with script.lock:
                    script.in_flight -= 1
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def chat_completion(content: str | None = None, logprobs: dict | None = None) -> dict:
    """An OpenAI chat completion with one choice (and a usage record)."""
    return {
        "id": "c", "object": "chat.completion", "created": 0, "model": "judge",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107},
    }  # fmt: skip
