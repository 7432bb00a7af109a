"""Several runs of a sweep at a time, each in a worker process of its own (``gpo run --parallel N``).

Why: on a CPU a small model's run gains less from a second thread than a second run does (the
reproduction's Llama grid: 1.32x the runs a minute with two at a time; the T5 grid trained twice as
many), so the cores are better spent on runs side by side. Each worker takes whole runs
(:class:`RunChain`: train, sample, judge, or an online run's rounds) with ``cores // N`` torch
threads, and a vLLM engine of its own bound to its own cores, started for each run and closed after
it (on CPUs an engine restarts for every checkpoint anyway). The workers' events come back through a
queue to the caller's callback in this process; a stop asked for here reaches every worker at its
next training step. Workers are spawned, not forked: a forked torch or vLLM holds locks and threads
it cannot use. It is made for CPUs: on one GPU each worker's vLLM engine would claim most of the
GPU's memory (vLLM already batches a run's prompts there).

Where torch splits an op's float sums across threads (larger models), a run's figures can depend on
its thread count, so a sweep run with another ``--parallel`` may give other figures; with the same
value it gives them again exactly. (On the reproduction's Llama grid, 1 and 2 gave the same figures
to the last digit: docs/evaluation.md.)
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.synchronize import Event as StopEvent

import torch

from gpo_core.errors import GPOError
from gpo_core.generate import start_engine
from gpo_core.sweep import stages
from gpo_core.sweep.chain import Events, RunChain, StopCheck

_POLL_S = 0.2  # how often the caller's stop is checked and the workers' events are passed on


def usable_cores() -> list[int]:
    """The cores this process may run on (a container's share, not the machine's)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS: no affinity masks
        return list(range(os.cpu_count() or 1))


def threads_per_run(parallel: int) -> int:
    """torch threads for each of ``parallel`` runs at a time: the usable cores shared out, at least one."""
    return max(1, len(usable_cores()) // parallel)


# One worker's state, set by _start_worker in the worker process.
_events: multiprocessing.Queue | None = None
_stop: StopEvent | None = None


def _start_worker(threads: int, counter, events: multiprocessing.Queue, stop: StopEvent) -> None:
    """A worker's set-up: its thread count, its own cores for vLLM, Ctrl-C left to the caller (the
    terminal sends it to every process of the group; the caller turns it into ``stop``)."""
    global _events, _stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _events, _stop = events, stop
    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    cores = usable_cores()
    mine = [cores[(index * threads + k) % len(cores)] for k in range(threads)]  # more workers than cores: shared
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))


def _run_in_worker(chain: RunChain, run: str) -> bool:
    """:meth:`RunChain.run_to_end` in a worker, with an engine of its own when the sweep samples with vLLM."""
    assert _events is not None and _stop is not None, "the pool's initializer sets them"
    events, stop = _events, _stop
    if stop.is_set():  # asked to stop before this run began: it stays queued for the next attempt
        return False
    engine = None
    if chain.backend == "vllm":
        inputs = stages.resolve_inputs(chain.spec)
        engine, _ = start_engine(inputs.reference, "vllm", stages.lora_rank(chain.spec))
    try:
        return replace(chain, engine=engine).run_to_end(run, events.put, stop.is_set)
    finally:
        if engine is not None:
            engine.close()


@contextmanager
def _workers_born_deaf_to_ctrl_c() -> Iterator[None]:
    """Ctrl-C ignored here while the workers are spawned (submit starts them): a spawned interpreter
    keeps an ignored SIGINT ignored, so a Ctrl-C during a worker's start-up, before its
    initializer runs, cannot kill it. This process's own handler is back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread sets handlers; a caller in another thread gets no Ctrl-C anyway
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class WorkerDied(GPOError):
    """A worker process ended without a result (killed, out of memory): its run is not over."""


def run_in_parallel(chain: RunChain, runs: list[str], parallel: int, emit: Events, stop_requested: StopCheck) -> bool:
    """Take ``runs`` to their ends, ``parallel`` at a time in worker processes; False when a stop
    was asked for (every worker stops at its next training step, resumable), True when all are
    over. A run's error stops the others the same way and is raised here once they have stopped."""
    context = multiprocessing.get_context("spawn")
    events: multiprocessing.Queue = context.Queue()
    stop = context.Event()
    shipped = replace(chain, engine=None)  # an engine does not cross processes: each worker starts its own
    threads = threads_per_run(parallel)
    emit({"kind": "log", "message": f"training {parallel} runs at a time, {threads} thread(s) each"})

    def pass_on_events() -> None:
        while True:
            try:
                emit(events.get_nowait())
            except queue.Empty:
                return

    completed = True
    error: BaseException | None = None
    with ProcessPoolExecutor(
        max_workers=min(parallel, len(runs)),
        mp_context=context,
        initializer=_start_worker,
        initargs=(threads, context.Value("i", 0), events, stop),
    ) as pool:
        with _workers_born_deaf_to_ctrl_c():
            pending: set[Future] = {pool.submit(_run_in_worker, shipped, run) for run in runs}
        while pending:
            finished, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
            pass_on_events()
            for future in finished:
                if future.cancelled() or (future.exception() is None and not future.result()):
                    completed = False
                elif future.exception() is not None and error is None:
                    error = future.exception()
            if (error is not None or stop_requested()) and not stop.is_set():
                stop.set()
                for future in pending:
                    future.cancel()  # the runs no worker has begun
    pass_on_events()
    if isinstance(error, BrokenProcessPool):
        raise WorkerDied(
            f"a worker process died ({error}); what the runs finished is kept: run again to resume, "
            f"with a smaller --parallel if memory ran out ({parallel} runs at a time here)"
        ) from error
    if error is not None:
        raise error
    return completed
