"""A free TCP port on loopback, for the servers tests start (redis-server, the control service,
vLLM's API server, a scripted JSON API)."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
