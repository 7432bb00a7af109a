"""Validating a submitted job spec without letting it stall the service.

A spec whose losses are all registry names is validated in the request (microseconds). A spec
with a formula of the tenant's own is validated in a child process with CPU, memory and wall
limits: parsing and analysing a formula is symbolic work whose cost a short text can blow up, and
the event loop that runs it answers nobody else meanwhile. The child is forked from a forkserver
that has the spec module imported, so it starts in milliseconds; what it returns is the validated
spec itself (unpickling runs no validator) or the field errors, so each formula is parsed once per
request and never in the serving process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
from typing import Any

from pydantic import ValidationError

from gpo_core.losses import registry_name
from gpo_core.specfile import problem_message
from gpo_core.sweep.spec import JobSpec

# Bytes of address space a validation child may add to what it starts with (the forkserver's).
MEMORY_HEADROOM = 512 * 2**20


class SpecInvalid(Exception):
    """The spec is invalid; ``details`` are pydantic's errors (``loc``, ``msg``)."""

    def __init__(self, details: list[dict]):
        self.details = details


def formulas_in(body: dict[str, Any]) -> list[str]:
    """The loss strings of a spec body that are not registry names: the ones that need parsing."""
    losses, runs = body.get("losses"), body.get("runs")
    candidates = list(losses) if isinstance(losses, list) else []
    runs = runs if isinstance(runs, list) else []
    candidates += [run.get("loss") for run in runs if isinstance(run, dict)]
    return [c for c in candidates if isinstance(c, str) and registry_name(c) is None]


def _errors(err: ValidationError) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": problem_message(e, JobSpec)} for e in err.errors()]


def validate_here(body: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(body)
    except ValidationError as err:
        raise SpecInvalid(_errors(err)) from None


def _child(body: dict[str, Any], connection, cpu_seconds: int) -> None:
    """In the child: limit CPU time and memory, validate, send the spec or the errors back."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    with open("/proc/self/statm") as handle:  # Linux; elsewhere the wall limit still holds
        size = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, size + MEMORY_HEADROOM))
    try:
        connection.send(("ok", JobSpec.model_validate(body)))
    except ValidationError as err:
        connection.send(("invalid", _errors(err)))
    except MemoryError:
        connection.send(("invalid", [{"loc": ["losses"], "msg": "checking the formula needs too much memory"}]))
    except Exception as err:  # a bug of ours, not the tenant's: the parent answers 500 and logs it
        connection.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        connection.close()


class FormulaSandbox:
    """Runs :func:`JobSpec.model_validate` in limited child processes, at most ``parallel`` at once
    per serving process (others wait their turn; the event loop never does)."""

    def __init__(self, timeout_s: float = 2.0, parallel: int = 2):
        self.timeout_s = timeout_s
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["gpo_core.sweep.spec"])
        self.slots = asyncio.Semaphore(parallel)

    def warm_up(self) -> None:
        """Start the forkserver now (it imports torch and sympy: seconds), not on the first formula."""
        process = self.context.Process(target=os.getpid)
        process.start()
        process.join()

    async def validate(self, body: dict[str, Any]) -> JobSpec:
        async with self.slots:
            return await asyncio.to_thread(self._run, body)

    def _run(self, body: dict[str, Any]) -> JobSpec:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_child, args=(body, send, max(1, int(self.timeout_s + 0.999))), name="gpo-spec-check", daemon=True
        )
        process.start()  # the clock starts once the child exists
        send.close()
        try:
            if not receive.poll(self.timeout_s):
                raise SpecInvalid([{"loc": ["losses"], "msg": self._too_slow()}])
            try:
                verdict, payload = receive.recv()
            except EOFError:  # killed by its CPU or memory limit
                raise SpecInvalid([{"loc": ["losses"], "msg": self._too_slow()}]) from None
        finally:
            process.kill()
            process.join()
            receive.close()
        if verdict == "invalid":
            raise SpecInvalid(payload)
        if verdict == "error":
            raise RuntimeError(f"validating a job spec failed in its child process: {payload}")
        return payload

    def _too_slow(self) -> str:
        return f"checking the loss formula took longer than {self.timeout_s:g} s; write a simpler formula"
