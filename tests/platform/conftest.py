"""Platform fixtures: a private redis-server on a free port (never the machine's shared one), a
clean database per test, and the real control service over HTTP (uvicorn on loopback)."""

import contextlib
import shutil
import subprocess
import threading
import time

import pytest
import redis
import uvicorn

from gpo_services.common.settings import Settings
from gpo_services.control.app import create_app
from gpo_services.control.server import server_config
from tests.support.ports import free_port

METRICS_KEY = "key-of-the-metrics-scraper-0123"
TENANT_KEYS = {"key-of-tenant-a-0123456789": "tenant-a", "key-of-tenant-b-0123456789": "tenant-b"}


def wait_until(check, timeout_s: float = 30.0, what: str = "condition", interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class RedisServer:
    """A private redis-server (append-only on) that tests may stop and start again."""

    def __init__(self, directory):
        self.directory, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        command = [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", str(self.directory), "--appendonly", "yes", "--save", ""]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)

        def up() -> bool:
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_until(up, 10, "redis-server")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server, tmp_path) -> Settings:
    return Settings(redis_url=redis_server.url, artifacts=tmp_path / "artifacts", api_keys=TENANT_KEYS,
                    max_body_bytes=64 * 1024, metrics_key=METRICS_KEY, rate_limit_per_minute=0,
                    max_active_runs=100_000)  # the tests submit thousands of jobs  # fmt: skip


@contextlib.contextmanager
def serving(settings: Settings):
    """The control service of ``settings`` on a free loopback port, configured as in production
    (server.py); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(server_config(create_app(settings), settings, host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "the control service")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def api(settings, redis_client):
    """The control service on a free loopback port; yields its base URL."""
    with serving(settings) as url:
        yield url
