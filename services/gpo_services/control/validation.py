"""Checking what a tenant sends without letting it stall the service.

A spec whose losses are all registry names is validated in the request (microseconds). A spec
with a formula of the tenant's own, and every dataset upload, is checked in a child process with
CPU, memory and wall limits: parsing and analysing a formula is symbolic work whose cost a short
text can blow up, a 127 KB Parquet file can inflate to gigabytes when read, and the event loop
that would run them answers nobody else meanwhile. The children are forked from a forkserver that
has the spec and data modules imported, so they start in milliseconds; what a child returns is the
validated spec itself (unpickling runs no validator), a record count, or what is wrong, so nothing
of the tenant's is parsed in the serving process. Each tenant has one check at a time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
from typing import Any

from pydantic import ValidationError

from gpo_core.loss_names import registry_name
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


def needs_symbolic_work(body: dict[str, Any]) -> bool:
    """Does checking this spec parse or analyse a loss (a formula of its own, or betas in
    IPO-equivalent units, which need each loss's f''(0)/|f'(0)|)? Then it is checked in a child:
    the serving process never loads torch or sympy."""
    training = body.get("training")
    ipo_units = isinstance(training, dict) and training.get("beta_units") == "ipo"
    return ipo_units or bool(formulas_in(body))


def _errors(err: ValidationError) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": problem_message(e, JobSpec)} for e in err.errors()]


def validate_here(body: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(body)
    except ValidationError as err:
        raise SpecInvalid(_errors(err)) from None


def _child(function, args: tuple, connection, cpu_seconds: int, memory_headroom: int) -> None:
    """In the child: limit CPU time and memory, run ``function(*args)``, send its answer back."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    with open("/proc/self/statm") as handle:  # Linux; elsewhere the wall limit still holds
        size = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + memory_headroom, size + memory_headroom))
    try:
        connection.send(function(*args))
    except MemoryError:
        connection.send(("too_large", None))
    except Exception as err:  # a bug of ours, not the tenant's: the parent answers 500 and logs it
        connection.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        connection.close()


def _validate_spec(body: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", JobSpec.model_validate(body)
    except ValidationError as err:
        return "invalid", _errors(err)


def _count_upload(path: str, kind: str, name: str) -> tuple[str, Any]:
    """Records of an uploaded file, or what is wrong with it, naming the upload (never the server path)."""
    from gpo_core.data import DatasetError, load_preferences, load_prompts

    try:
        records = load_preferences(path) if kind == "pairs" else load_prompts(path)
    except DatasetError as err:
        return "invalid", str(err).replace(str(path), name)
    if kind == "prompts":
        missing = next((i for i, r in enumerate(records, start=1) if "id" not in r), None)
        if missing is not None:
            return "invalid", f"{name}: record {missing}: field 'id' is missing"
    return "ok", len(records)


class TooSlow(Exception):
    """A check ran past its time or memory in its child."""


class TenantChecks:
    """Work on a tenant's bytes that a short input can blow up (a loss formula's symbolic analysis,
    a Parquet file that inflates a thousandfold) runs in forked children with CPU, memory and wall
    limits, never in the serving process: at most ``parallel`` at once per serving process, and one
    at a time per tenant, so one tenant's flood waits its own turn while the others go on."""

    def __init__(self, timeout_s: float = 2.0, parallel: int = 2):
        self.timeout_s = timeout_s
        self.context = multiprocessing.get_context("forkserver")
        # The spec module reads registry names without torch; a formula's check needs the losses
        # (torch, sympy) and IPO units the analysis: loaded here once, not in every child.
        self.context.set_forkserver_preload(
            ["gpo_core.sweep.spec", "gpo_core.losses", "gpo_core.analysis", "gpo_core.data"]
        )
        self.slots = asyncio.Semaphore(parallel)
        self.tenant_slots: dict[str, asyncio.Semaphore] = {}

    def warm_up(self) -> None:
        """Start the forkserver now (it imports torch and sympy: seconds), not on the first formula."""
        process = self.context.Process(target=os.getpid)
        process.start()
        process.join()

    async def validate(self, body: dict[str, Any], tenant: str = "") -> JobSpec:
        """The spec, validated in a child; :class:`SpecInvalid` with the field errors."""
        try:
            verdict, payload = await self._run(tenant, _validate_spec, (body,), self.timeout_s, MEMORY_HEADROOM)
        except TooSlow:
            raise SpecInvalid([{"loc": ["losses"], "msg": self._too_slow()}]) from None
        if verdict == "too_large":
            raise SpecInvalid([{"loc": ["losses"], "msg": "checking the formula needs too much memory"}])
        if verdict == "invalid":
            raise SpecInvalid(payload)
        if verdict == "error":
            raise RuntimeError(f"validating a job spec failed in its child process: {payload}")
        return payload

    async def count_upload(self, path: str, kind: str, name: str, tenant: str, timeout_s: float, memory: int) -> int:
        """Records in an uploaded file, read in a child; ValueError saying what is wrong with it."""
        try:
            verdict, payload = await self._run(tenant, _count_upload, (path, kind, name), timeout_s, memory)
        except TooSlow:
            raise ValueError(
                f"{name}: reading it took longer than {timeout_s:g} s or more than "
                f"{memory // 2**20} MiB of memory (a file that inflates when read)"
            ) from None
        if verdict == "too_large":
            raise ValueError(
                f"{name}: reading it needs more than {memory // 2**20} MiB of memory (a file that inflates when read)"
            )
        if verdict == "invalid":
            raise ValueError(payload)
        if verdict == "error":
            raise RuntimeError(f"reading an upload failed in its child process: {payload}")
        return payload

    async def _run(self, tenant: str, function, args: tuple, timeout_s: float, memory: int) -> tuple[str, Any]:
        own = self.tenant_slots.setdefault(tenant, asyncio.Semaphore(1))
        async with own, self.slots:
            return await asyncio.to_thread(self._in_child, function, args, timeout_s, memory)

    def _in_child(self, function, args: tuple, timeout_s: float, memory: int) -> tuple[str, Any]:
        receive, send = self.context.Pipe(duplex=False)
        cpu = max(1, int(timeout_s + 0.999))
        process = self.context.Process(
            target=_child, args=(function, args, send, cpu, memory), name="gpo-tenant-check", daemon=True
        )
        process.start()  # the clock starts once the child exists
        send.close()
        try:
            if not receive.poll(timeout_s):
                raise TooSlow
            try:
                return receive.recv()
            except EOFError:  # killed by its CPU or memory limit
                raise TooSlow from None
        finally:
            process.kill()
            process.join()
            receive.close()

    def _too_slow(self) -> str:
        return f"checking the loss formula took longer than {self.timeout_s:g} s; write a simpler formula"
