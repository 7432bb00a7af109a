"""Every task a worker runs with tenant content runs in a child process the worker supervises.

Isolation by construction, not feature by feature: whatever a task reads (a tenant's data, chat
template, model files, judge answers), it reads in a child that

- starts with an environment made from an allow-list (:func:`task_environment`): none of the
  platform's secrets (Redis URL and password, Ray token, metrics key, API keys) is there to leak;
  what a task needs from the worker (a judge key, a Ray address) is passed in its payload;
- leads its own process group, with its own limits (CPU seconds, data memory, open files, no core
  files) and dies with its worker (``PR_SET_PDEATHSIG``);
- ends when its task is cancelled, deleted, past its deadline or its worker is stopping, whatever
  it is doing: first asked (a training run checkpoints and returns), then, after
  ``GPO_TASK_STOP_GRACE_S``, SIGTERM and SIGKILL to the whole group.

The child talks to its worker over two pipes: the task (one JSON line) and "stop" come in on
stdin; events (progress records, log lines) and the outcome go out as JSON lines on its original
stdout. Everything else the child prints goes to its stderr, the worker's log. The child knows no
Redis: the worker turns events into job events and the outcome into the run's next state.

A worker keeps one child for task after task (``keep_alive``: imports take seconds, and the
generator's warm vLLM engine lives there), started again after any task that had to be stopped
or whose process died.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import queue
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO, Any

from gpo_core.errors import PermanentError
from gpo_core.stopping import Stopped
from gpo_services.common.settings import Limits

# Variables a task's child inherits, by name or prefix; then any name that looks like a credential
# is dropped all the same (HF_TOKEN, VLLM_API_KEY, AWS_SECRET_ACCESS_KEY, ...).
ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "TOKENIZERS_PARALLELISM",
        "GPO_CACHE_DIR",
        "GPO_MMAP_THRESHOLD_MIB",
        "RAY_ADDRESS",
        "RAY_AUTH_MODE",
        "MALLOC_MMAP_THRESHOLD_",
    }
)
ENV_PREFIXES = ("LC_", "HF_", "TRANSFORMERS_", "VLLM_", "RAY_TRAIN_", "TORCH_", "CUDA_", "NCCL_")
CREDENTIAL_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH_", "REDIS")


def task_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment of a task's child: the allow-listed part of ``environ``, no credential.
    A task that drives its own local Ray gets a fresh Ray token of its own; one that drives the
    operator's Ray cluster (``RAY_ADDRESS``) gets that cluster's token, since the cluster's workers
    run its training code anyway."""
    kept = {
        name: value
        for name, value in environ.items()
        if (name in ENV_NAMES or name.startswith(ENV_PREFIXES))
        and not any(word in name.upper() for word in CREDENTIAL_WORDS)
    }
    if environ.get("RAY_AUTH_MODE") == "token":
        kept["RAY_AUTH_MODE"] = "token"
        own_cluster = "RAY_ADDRESS" in environ and "RAY_AUTH_TOKEN" in environ
        kept["RAY_AUTH_TOKEN"] = environ["RAY_AUTH_TOKEN"] if own_cluster else secrets.token_hex(32)
    return kept


class TaskFailed(Exception):
    """A task's child ended with an error. ``permanent``: another attempt cannot fix it (bad data,
    a bad spec, a refused judge request); the message says what was wrong and where."""

    def __init__(self, message: str, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


class Sandbox:
    """The worker's side: runs a task in a child and supervises it (see the module docstring)."""

    def __init__(self, limits: Limits, keep_alive: bool = False, log: Callable[[str], None] = print):
        self.limits, self.keep_alive, self.log = limits, keep_alive, log
        self.child: subprocess.Popen | None = None
        self._events: queue.Queue[dict | None] = queue.Queue()

    def run(
        self,
        target: str,
        payload: dict,
        should_stop: Callable[[], bool],
        on_event: Callable[[dict], None] = lambda event: None,
        stop_now: Callable[[], bool] = lambda: False,
    ) -> Any:
        """``target(payload, emit, should_stop)`` in the child (``"module:function"``, code of this
        package); its events go to ``on_event``. ``should_stop``: ask the task to stop (it may
        checkpoint first); ``stop_now``: end it at once (its job was deleted: nothing may be
        written any more). Returns its result; raises :class:`Stopped` when it was stopped,
        :class:`TaskFailed` when it failed or its process died."""
        child = self._child()
        assert child.stdin is not None
        try:
            child.stdin.write(json.dumps({"target": target, "payload": payload}) + "\n")
            child.stdin.flush()
        except BrokenPipeError:
            pass  # it died at start: its exit is reported below
        stop_asked_at: float | None = None
        outcome: dict | None = None
        while outcome is None:
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                event = {}
            if event is None:  # the child's output ended: it is gone
                break
            if "outcome" in event:
                outcome = event["outcome"]
            elif event:
                on_event(event)
            if stop_now():
                self.close(polite=False)
                raise Stopped
            if stop_asked_at is None and should_stop():
                stop_asked_at = time.monotonic()
                self._send("stop")
            if stop_asked_at is not None and time.monotonic() - stop_asked_at > self.limits.stop_grace_s:
                self.log(f"the task did not stop within {self.limits.stop_grace_s:g} s of being asked: ended")
                self.close(polite=False)
                raise Stopped
        if outcome is None or stop_asked_at is not None or not self.keep_alive or "error" in outcome:
            code = self.close()
            if outcome is None:
                if stop_asked_at is not None:
                    raise Stopped
                raise TaskFailed(f"the task's process ended without an answer ({_exit_reason(code)})", False)
        if outcome.get("stopped"):
            raise Stopped
        if "error" in outcome:
            raise TaskFailed(outcome["error"], bool(outcome.get("permanent")))
        return outcome.get("result")

    def close(self, polite: bool = True) -> int | None:
        """End the child and its whole process group; its exit code. ``polite``: its input closes and
        it has a grace period to exit by itself (its own clean-up runs: a local Ray shut down);
        then, or at once when not polite, SIGTERM, and SIGKILL to whatever is left of the group."""
        child, self.child = self.child, None
        if child is None:
            return None
        with contextlib.suppress(OSError):
            child.stdin.close() if child.stdin else None
        return _end_group(child, min(self.limits.stop_grace_s, 10.0) if polite else 0.0)

    def _child(self) -> subprocess.Popen:
        if self.child is not None and self.child.poll() is None:
            return self.child
        self.close()
        self._events = queue.Queue()
        limits = json.dumps(vars(self.limits))
        self.child = subprocess.Popen(
            [sys.executable, "-m", "gpo_services.common.sandbox", limits, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=task_environment(dict(os.environ)),
            start_new_session=True,  # its own process group: ended as one
            text=True,
            bufsize=1,
        )
        threading.Thread(target=_read_events, args=(self.child.stdout, self._events), daemon=True).start()
        return self.child

    def _send(self, line: str) -> None:
        if self.child is not None and self.child.stdin is not None:
            with contextlib.suppress(OSError):
                self.child.stdin.write(line + "\n")
                self.child.stdin.flush()


def _read_events(stream: IO[str], events: queue.Queue[dict | None]) -> None:
    for line in stream:
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.put(event)
    events.put(None)


def _end_group(child: subprocess.Popen, exit_s: float) -> int | None:
    """Up to ``exit_s`` for the child to exit by itself, then SIGTERM to its group and SIGKILL
    a few seconds later; always SIGKILL what is left of the group."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=exit_s)
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)  # the child and anything it started (Ray, vLLM's engine)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=10)
    return child.returncode


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        hint = {"SIGKILL": ": out of memory, or past a limit", "SIGXCPU": ": past its CPU seconds"}.get(name, "")
        return f"{name}{hint}"
    return f"exit code {code}"


# -- the child's side ----------------------------------------------------------------------------

Emit = Callable[[dict], None]


class ProgressEvents:
    """A metrics sink in a task's child: each training record goes to the worker as an event."""

    def __init__(self, emit: Emit):
        self._emit = emit

    def emit(self, record: dict) -> None:
        self._emit({"progress": record})

    def close(self) -> None:
        pass


PR_SET_PDEATHSIG = 1


def _limit_self(limits: dict, worker: int) -> None:
    """Limits of this process, set before any task content is read; and death with the worker
    (``worker``: its pid, which is 1 in a container)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != worker:  # the worker died before the line above
        os._exit(1)
    caps = {
        resource.RLIMIT_CPU: limits["cpu_seconds"],
        resource.RLIMIT_DATA: limits["data_bytes"] or resource.RLIM_INFINITY,
        resource.RLIMIT_NOFILE: limits["open_files"],
        resource.RLIMIT_CORE: 0,
    }
    for kind, value in caps.items():
        _, hard = resource.getrlimit(kind)
        value = hard if hard != resource.RLIM_INFINITY and (value == resource.RLIM_INFINITY or value > hard) else value
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(kind, (value, value))


def _classify(err: BaseException) -> dict:
    if isinstance(err, Stopped):
        return {"stopped": True}
    if isinstance(err, PermanentError):
        return {"error": str(err), "permanent": True}
    return {"error": f"{type(err).__name__}: {err}", "permanent": False}


def main() -> None:
    limits = json.loads(sys.argv[1])
    _limit_self(limits, int(sys.argv[2]))
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # events; what the task prints goes to stderr
    os.dup2(2, 1)
    lock = threading.Lock()

    def emit(event: dict) -> None:
        line = json.dumps(event, default=str)
        with lock:
            channel.write(line + "\n")

    tasks: queue.Queue[dict | None] = queue.Queue()
    stop = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                stop.set()
            elif line.strip():
                tasks.put(json.loads(line))
        stop.set()  # the worker is gone: stop what is running
        tasks.put(None)

    threading.Thread(target=read_stdin, daemon=True).start()
    while (task := tasks.get()) is not None:
        module, name = task["target"].split(":")
        try:
            function = getattr(importlib.import_module(module), name)
            outcome = {"result": function(task["payload"], emit, stop.is_set)}
        except BaseException as err:
            outcome = _classify(err)
            if outcome.get("permanent") is False:
                traceback.print_exc()  # an unexpected error: its traceback goes to the worker's log
        emit({"outcome": outcome})
        if stop.is_set():  # what a stopped task left running (a call on a thread) is abandoned
            channel.flush()
            os._exit(0)


if __name__ == "__main__":
    main()
