"""Stopping long work on request: a cancelled job, a worker shutting down, a task past its deadline.

Long loops (building the built-in task, sampling, judging) call :func:`check` with the caller's
``should_stop`` between units of work; it raises :class:`Stopped`, and the caller, who knows why
it asked, decides what that means (hand the task back, mark the run cancelled, fail it)."""

from __future__ import annotations

from collections.abc import Callable

StopCheck = Callable[[], bool]


class Stopped(Exception):
    """The work was asked to stop before it finished; nothing it wrote is final."""


def check(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise Stopped
