"""Where training metrics go: a sink interface with stdout and JSONL implementations (the
services add Redis). Every record is a flat JSON object with at least ``kind`` and ``step``."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TextIO


class MetricsSink(Protocol):
    def emit(self, record: dict) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON line per record and flushes, so a crash loses at most the current line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")

    def emit(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class StdoutSink:
    """One compact line per record, for logs."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def emit(self, record: dict) -> None:
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
        print(" ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class ListSink:
    """Keeps records in memory (notebooks, the CLI's progress bar, tests)."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def emit(self, record: dict) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


class FanOut:
    def __init__(self, *sinks: MetricsSink):
        self.sinks = sinks

    def emit(self, record: dict) -> None:
        for sink in self.sinks:
            sink.emit(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def rewind_jsonl(path: str | Path, step: int) -> int:
    """Cut a metrics file back to the records of steps up to ``step`` (where a resumed run starts
    again), in place, so the steps it trains a second time are not listed twice. Returns how many
    records were dropped. Records are appended in step order: everything from the first record past
    ``step`` on (or from a line cut short by a crash) belongs to the lost stretch."""
    path = Path(path)
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        lines = handle.readlines()
    offset = 0
    for kept, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > step:
            os.truncate(path, offset)  # in place: a writer in append mode goes on at the new end
            return len(lines) - kept
        offset += len(line)
    return 0


def jsonl_end(path: Path) -> tuple[int, bytes]:
    """Where a follower of ``path`` starts: the end of its last whole line, and that line (which
    lets the follower notice that the file was cut back before it read anything new)."""
    if not path.exists():
        return 0, b""
    whole = path.read_bytes()
    offset = whole.rfind(b"\n") + 1
    return offset, whole[whole.rfind(b"\n", 0, offset - 1) + 1 : offset]


def follow_jsonl(
    path: Path,
    sink: MetricsSink,
    done: threading.Event,
    poll: Callable[[], None] = lambda: None,
    start: tuple[int, bytes] | None = None,
) -> None:
    """Feed the records appended to a JSONL file (by another process: Ray Train's rank 0) to
    ``sink`` until ``done`` is set, calling ``poll`` every half second. Records already in the
    file (an earlier attempt's) are skipped.

    A resumed run cuts the file back (:func:`rewind_jsonl`) and appends again, possibly past where
    this follower had read between two polls. The follower notices (the line it read last is no
    longer where it was) and goes on from the resumed run's ``start`` record. A line that is not
    JSON is skipped, never fatal: the run's progress must keep flowing.

    ``start`` (from :func:`jsonl_end`, taken by the caller before it starts the writer) fixes which
    records count as earlier; by default it is taken when this function begins."""
    offset, last = start if start is not None else jsonl_end(path)  # ``last`` must still end at ``offset``
    while True:
        finished = done.wait(0.5)
        poll()
        if path.exists():
            with path.open("rb") as handle:  # what is new since the last poll, and the line before it
                size = os.fstat(handle.fileno()).st_size
                handle.seek(offset - len(last))
                data = handle.read()
                if size < offset or data[: len(last)] != last:  # cut back (perhaps grown again): read it all
                    handle.seek(0)
                    whole = handle.read()
                    restart = whole.rfind(b'"kind": "start"')
                    offset = whole.rfind(b"\n", 0, restart) + 1 if restart >= 0 else len(whole)
                    data, last = whole[offset:], b""
                else:
                    data = data[len(last) :]
            complete = data[: data.rfind(b"\n") + 1]
            offset += len(complete)
            lines = complete.splitlines(keepends=True)
            last = lines[-1] if lines else last
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    sink.emit(record)
        if finished:
            return
