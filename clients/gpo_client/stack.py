"""The local stack (``gpo up`` / ``gpo down``): a private redis-server, the control service and the
trainer, generator and judge workers, all on loopback, with their logs in one folder. The
trainer starts Ray locally when a job trains on Ray workers.

The stack's folder holds ``stack.json`` (addresses, the API key, process ids), ``logs/``, the
artifacts and Redis's append-only file, so a stack brought down and up again keeps its jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SERVICES = {  # name -> module run with python -m
    "control": "gpo_services.control",
    "trainer": "gpo_services.trainer",
    "generator": "gpo_services.generator",
    "judge": "gpo_services.judge",
}


def _pointer() -> Path:
    """Where ``gpo up --dir X`` leaves the folder of the stack it started, for the other commands."""
    return Path.home() / ".gpo" / "current-stack"


def default_stack_dir() -> Path:
    """$GPO_STACK_DIR, else the folder of the stack ``gpo up`` last started (``--dir``), else
    ~/.gpo/stack."""
    if "GPO_STACK_DIR" in os.environ:
        return Path(os.environ["GPO_STACK_DIR"])
    try:
        started = Path(_pointer().read_text().strip())
        if (started / "stack.json").exists():
            return started
    except OSError:
        pass
    return Path.home() / ".gpo" / "stack"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, exited: reaped now
            return False
    except ChildProcessError:
        pass  # not our child (a stack started by another gpo up)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stack(directory: Path | None = None) -> dict | None:
    """The stack's record when its control service answers, else None."""
    path = (directory or default_stack_dir()) / "stack.json"
    if not path.exists():
        return None
    stack = json.loads(path.read_text())
    try:
        if httpx.get(f"{stack['server']}/healthz", timeout=2).status_code == 200:
            return stack
    except httpx.HTTPError:
        return None
    return None


PRIVATE_UMASK = 0o077  # files 0600, folders 0700


def _private_log(path: Path):
    """A log file, appended to, readable by its owner only (made so if it exists already)."""
    handle = open(path, "a", opener=lambda name, flags: os.open(name, flags, 0o600))  # noqa: SIM115
    os.fchmod(handle.fileno(), 0o600)
    return handle


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds the API key or a password)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # a file left by an older version keeps its mode otherwise
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


class StackError(RuntimeError):
    pass


def _wait_for(check, what: str, timeout_s: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise StackError(f"{what} did not start within {timeout_s:.0f} s; see the logs in {logs}")


def start_stack(
    directory: Path | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
    workers: tuple[str, ...] = ("trainer", "generator", "judge"),
) -> dict:
    """Start the stack (or return the running one). ``env`` adds settings for every service."""
    directory = (directory or default_stack_dir()).resolve()
    if (stack := running_stack(directory)) is not None:
        return stack
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise StackError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (directory / "redis").mkdir(exist_ok=True)
    # Everything the stack keeps (uploads, artifacts, Redis's append-only file, logs) is its
    # owner's alone: the folder is 0700 and every process it starts creates files 0600/0700.
    for folder in (directory, logs, directory / "redis"):
        folder.chmod(0o700)
    api_key = os.environ.get("GPO_API_KEY") or secrets.token_urlsafe(24)
    redis_password = secrets.token_urlsafe(24)  # other local users can reach a loopback port too
    redis_port, port = free_port(), port or free_port()
    stack = {
        "server": f"http://127.0.0.1:{port}",
        "api_key": api_key,
        "redis_url": f"redis://:{redis_password}@127.0.0.1:{redis_port}/0",
        "artifacts": str(directory / "artifacts"),
        "logs": str(logs),
        "pids": {},
    }
    processes = stack["pids"]
    with _private_log(logs / "redis.log") as log:
        config = directory / "redis" / "redis.conf"  # the password in a private file, not on a command line
        _write_private(config, f"requirepass {redis_password}\n")
        redis_command = [
            redis_server,
            str(config),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory / "redis"),
            "--appendonly",
            "yes",
            "--save",
            "",
        ]
        processes["redis"] = subprocess.Popen(
            redis_command, stdout=log, stderr=log, start_new_session=True, umask=PRIVATE_UMASK
        ).pid
    service_env = {
        **os.environ,
        "GPO_REDIS_URL": stack["redis_url"],
        "GPO_ARTIFACTS": stack["artifacts"],
        "GPO_API_KEYS": f"{api_key}:local",
        "GPO_HOST": "127.0.0.1",
        "GPO_PORT": str(port),
        # Ray (started by the trainer for multi-worker jobs) has no authentication of its own and
        # its ports listen on every interface: a token keeps anyone else from running code on it.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        **(env or {}),
    }
    for name in ("control", *workers):
        with _private_log(logs / f"{name}.log") as log:
            command = [sys.executable, "-m", SERVICES[name]]
            processes[name] = subprocess.Popen(
                command, stdout=log, stderr=log, env=service_env, start_new_session=True, umask=PRIVATE_UMASK
            ).pid
    _write_private(directory / "stack.json", json.dumps(stack, indent=1))
    _pointer().parent.mkdir(parents=True, exist_ok=True)
    _pointer().write_text(str(directory))
    try:
        _wait_for(lambda: running_stack(directory) is not None, "the control service", 60, logs)
        ready = lambda: httpx.get(f"{stack['server']}/readyz", timeout=2).status_code == 200  # noqa: E731
        _wait_for(ready, "redis", 30, logs)
    except StackError:
        stop_stack(directory)
        raise
    return stack


def stop_stack(directory: Path | None = None, grace_s: float = 30.0) -> list[str]:
    """SIGTERM every service (workers finish or hand back their task), then Redis; SIGKILL what
    is still running after ``grace_s``. Returns the names stopped."""
    directory = (directory or default_stack_dir()).resolve()
    path = directory / "stack.json"
    if not path.exists():
        return []
    pids: dict[str, int] = json.loads(path.read_text())["pids"]
    order = [name for name in pids if name != "redis"] + (["redis"] if "redis" in pids else [])
    stopped = []
    for group in ([n for n in order if n != "redis"], ["redis"]):
        for name in group:
            if name in pids and _alive(pids[name]):
                os.killpg(pids[name], signal.SIGTERM)
                stopped.append(name)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(pids[n]) for n in group if n in pids):
            time.sleep(0.2)
        for name in group:
            if name in pids and _alive(pids[name]):
                os.killpg(pids[name], signal.SIGKILL)
    path.unlink()
    with contextlib.suppress(OSError):
        if Path(_pointer().read_text().strip()) == directory:
            _pointer().unlink()
    return stopped
