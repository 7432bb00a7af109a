"""The control service with several processes (GPO_WORKERS=2): each has its own socket on the
port, connections are spread over them, a dead one is replaced, SIGTERM stops them all, and a
taken port is a clear error. Real processes, a real redis-server, HTTP on loopback."""

import http.client
import os
import select
import signal
import socket
import subprocess
import sys

import httpx
import psutil
import pytest

from gpo_services.control.processes import bound_socket
from tests.platform.conftest import TENANT_KEYS, wait_until
from tests.support.ports import free_port

KEY = next(iter(TENANT_KEYS))


def start_control(redis_url: str, tmp_path, port: int, workers: int = 2) -> subprocess.Popen:
    env = {**os.environ, "GPO_REDIS_URL": redis_url, "GPO_ARTIFACTS": str(tmp_path / "artifacts"),
           "GPO_API_KEYS": f"{KEY}:tenant-a", "GPO_PORT": str(port), "GPO_WORKERS": str(workers),
           "GPO_RATE_LIMIT_PER_MINUTE": "0"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "gpo_services.control"], env=env, stderr=subprocess.PIPE, text=True)


def ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def connections_per_process(parent: subprocess.Popen, port: int, status: str = "ESTABLISHED") -> dict[int, int]:
    """Connections on the port in ``status``, per serving process (not multiprocessing's helper;
    a process starting or exiting meanwhile is left out)."""
    counts = {}
    for child in psutil.Process(parent.pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE or "resource_tracker" in " ".join(child.cmdline()):
                continue
            connections = child.net_connections("tcp")
        except psutil.Error:
            continue
        counts[child.pid] = sum(1 for c in connections if c.laddr.port == port and c.status == status)
    return counts


def listening_processes(parent: subprocess.Popen, port: int) -> int:
    """Processes listening on the port: those whose app has started (a process listens only then)."""
    return sum(1 for n in connections_per_process(parent, port, "LISTEN").values() if n)


@pytest.fixture
def control(redis_server, tmp_path):
    port = free_port()
    process = start_control(redis_server.url, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(base), 60, "the control service")
    wait_until(lambda: listening_processes(process, port) == 2, 60, "both processes listening")
    yield process, port, base
    if process.poll() is None:
        process.kill()
        process.wait()


def test_connections_are_spread_over_the_processes_and_a_dead_one_is_replaced(control) -> None:
    process, port, base = control
    kept_alive = []
    for _ in range(32):  # connected all at once, as a burst of clients would
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.connect()
        kept_alive.append(connection)
    for connection in kept_alive:
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b'{"status":"ok"}'
    wait_until(lambda: sum(connections_per_process(process, port).values()) == 32, 10, "32 connections")
    counts = connections_per_process(process, port)
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts  # all on one: 2**-31
    for connection in kept_alive:
        connection.close()

    victim = next(iter(counts))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in connections_per_process(process, port), 10, "the killed process to go")
    # A process listens only once its app has started: the kernel hands the replacement no
    # connection while it is still importing (which took over 5 s in CI), so none waits on it.
    wait_until(lambda: listening_processes(process, port) == 2, 60, "a replacement process listening")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=5) as client:
        for _ in range(20):  # new connections, whichever process takes them
            assert client.get("/jobs", headers={"Connection": "close"}).status_code == 200


def test_sigterm_stops_every_process_and_a_taken_port_is_a_clear_error(control, redis_server, tmp_path) -> None:
    process, port, base = control
    children = list(connections_per_process(process, port))
    second = start_control(redis_server.url, tmp_path, port)
    _, errors = second.communicate(timeout=60)
    assert second.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in errors
    assert ready(base)  # the first instance is untouched
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=40) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in children)


def test_the_processes_stop_when_their_parent_is_killed(control) -> None:
    process, port, base = control
    children = list(connections_per_process(process, port))
    assert len(children) == 2
    process.kill()  # SIGKILL: no chance to stop them itself
    process.wait()
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in children), 30, "the orphaned processes to stop")
    wait_until(lambda: not ready(base), 10, "the port to be released")


def test_processes_that_cannot_run_a_handler_die_with_their_parent(control) -> None:
    """Stopped processes (as good as a blocked event loop: no signal handler runs) still die when
    the parent is killed: the kernel sends SIGKILL, not a SIGTERM they would never handle."""
    process, port, base = control
    children = list(connections_per_process(process, port))
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    process.kill()
    process.wait()
    wait_until(lambda: not any(_alive(pid) for pid in children), 30, "the stopped processes to be killed")
    wait_until(lambda: not ready(base), 10, "the port to be released")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_process_that_fails_on_an_error_stops_the_service_instead_of_restarting(tmp_path) -> None:
    process = start_control("nonsense://127.0.0.1:1/0", tmp_path, free_port())
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "Redis URL must specify one of the following schemes" in errors and "a control process failed" in errors


def test_a_bound_socket_gets_connections_only_once_it_listens() -> None:
    """What keeps a starting process from being handed connections: on a SO_REUSEPORT port the
    kernel spreads connections over the sockets that listen, not over those only bound."""
    port = free_port()

    def accepted_by(*listening: socket.socket) -> list[socket.socket]:
        takers = []
        for _ in range(32):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                readable, _, _ = select.select(listening, [], [], 5)
                assert readable, "no socket was handed the connection"
                readable[0].accept()[0].close()
                takers.append(readable[0])
        return takers

    with bound_socket("127.0.0.1", port) as serving, bound_socket("127.0.0.1", port) as starting:
        serving.listen(64)
        accepted_by(serving)  # each handed to the listening socket within 5 s, none held by the bound one
        starting.listen(64)
        assert starting in accepted_by(serving, starting)  # none of 32 to it: odds 2**-32
