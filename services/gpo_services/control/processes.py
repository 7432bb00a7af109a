"""Several processes of the control service on one port (``GPO_WORKERS`` > 1).

Each process listens on a socket of its own with ``SO_REUSEPORT``, and the kernel spreads new
connections over them; a process listens only once its app has started, so a replacement still
importing is handed nothing to answer. uvicorn's own workers share one listening socket instead;
clients keep their connections alive, and a burst of them (64 clients connecting at once) was all
accepted by one process while the other idled. A process killed by a signal is replaced; one that
exits on an error stops the service with its exit code (restarting would fail the same way).
SIGTERM or SIGINT stops them all gracefully (uvicorn finishes the requests in flight).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait

from gpo_services.common.logs import log, service_logger
from gpo_services.common.settings import Settings
from gpo_services.control.server import server_config

STARTUP_FAILURE = 3  # uvicorn's exit code when a server cannot start; ours when the port is taken
GRACE_S = 30.0
PR_SET_PDEATHSIG = 1  # prctl(2)


def bound_socket(host: str, port: int) -> socket.socket:
    """Bound, not yet listening: asyncio listens on it once uvicorn has loaded the app and run its
    startup. The kernel spreads connections over listening sockets only, so a process still
    importing (seconds, for a replacement on a busy machine) is handed none it cannot answer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _serve_one(host: str, port: int, parent: int) -> None:
    """One process: its own socket on the shared port, the app built from the environment. In a
    process group of its own, so that a Ctrl+C reaches only the parent, which stops it once; and
    on Linux the kernel kills it if the parent dies (SIGKILL, which even a blocked event loop cannot
    ignore: nothing is left holding the port)."""
    import uvicorn

    os.setpgrp()
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before that took effect
            sys.exit(0)
    try:
        sock = bound_socket(host, port)
    except OSError as err:
        print(f"control service: cannot listen on {host}:{port}: {err}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    config = server_config("gpo_services.control.app:serving_app", Settings.from_env(), factory=True)
    uvicorn.Server(config).run(sockets=[sock])


def _port_is_free(host: str, port: int) -> OSError | None:
    """Bind without SO_REUSEPORT: fails if anything, another instance of this service included,
    holds the port (it would otherwise share the port with us, silently)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            return err
    return None


def serve(settings: Settings) -> None:
    """Run ``settings.workers`` processes until SIGTERM or SIGINT; exits non-zero if they cannot start."""
    busy = _port_is_free(settings.host, settings.port)
    if busy is not None:
        raise SystemExit(f"control service: cannot listen on {settings.host}:{settings.port}: {busy}")
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_serve_one, args=(settings.host, settings.port, os.getpid()), name="gpo-control"
        )
        process.start()
        return process

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    logger = service_logger("control")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processes = [start() for _ in range(settings.workers)]
    failed = 0
    while not stopping:
        wait([p.sentinel for p in processes], timeout=0.5)
        for index, process in enumerate(processes):
            if process.is_alive() or stopping:
                continue
            if (process.exitcode or 0) > 0:  # it stopped itself on an error (a port, a setting): another would too
                log(logger, logging.ERROR, "a control process failed; stopping", pid=process.pid, code=process.exitcode)
                failed, stopping = process.exitcode or 1, True
                break
            log(
                logger,
                logging.WARNING,
                "a control process was killed; starting another",
                pid=process.pid,
                code=process.exitcode,
            )
            processes[index] = start()
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: uvicorn's graceful shutdown
    deadline = time.monotonic() + GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    if failed:
        raise SystemExit(failed)
