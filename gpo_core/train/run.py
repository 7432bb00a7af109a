"""A training run's frame: what differs between a run in this process and one on Ray Train
(:class:`RunContext`), what a run ends with (:class:`RunResult`), its errors, and the record a
diverged run leaves in its folder."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpo_core.data import write_json
from gpo_core.errors import PermanentError
from gpo_core.train.device import DeviceProfile, describe_device
from gpo_core.train.metrics import MetricsSink

METRICS_FILE = "metrics.jsonl"
DIVERGED = "diverged.json"  # written where a run stopped on a non-finite loss (by rank 0 on Ray)


class TrainingError(PermanentError):
    """A run that cannot go on; the message says why and where."""


class NonFiniteLossError(TrainingError):
    """The loss or its gradient overflowed at ``step``: the run diverged. A sweep records such a run
    as diverged and goes on; a single training fails with this message."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class RunContext:
    """What differs between in-process and distributed runs."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Called with (metrics, checkpoint folder or None) at every checkpoint: Ray's report.
    on_checkpoint: Callable[[dict, Path | None], None] | None = None
    resume_from: Path | None = None
    should_stop: Callable[[], bool] = lambda: False
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model  # DDP
    barrier: Callable[[], None] = lambda: None
    # Sums a tensor over the workers (in place) and returns it; the identity in one process.
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor
    # The host each worker runs on, by rank (in the start record: where a run really trained).
    hosts: list[str] = field(default_factory=lambda: [socket.gethostname()])
    nodes: list[str] = field(default_factory=list)  # the Ray node of each worker, by rank (Ray only)
    # What the loop knows of its device (name, peak FLOPs, transfers, peak memory): a test gives
    # the loop a GPU's profile on a CPU, so every device branch runs in CI.
    describe_device: Callable[[torch.device], DeviceProfile] = describe_device


@dataclass
class RunResult:
    steps: int
    final_model_dir: str | None
    last_metrics: dict
    reference_cache: str  # "hit" or "miss"
    stopped: bool
    padded_fraction: float
    diverged: str | None = None  # why the run stopped on a non-finite loss or gradient, and at which step


def record_divergence(output_dir: str | Path, err: NonFiniteLossError, sink: MetricsSink) -> RunResult:
    """A run that diverged ends with a ``diverged`` metrics record and :data:`DIVERGED` in its folder
    (what a Ray driver reads: the workers end normally, so Ray does not retry a deterministic
    overflow from its last checkpoint); its result, as :func:`diverged_result` reads it back."""
    record = {"kind": "diverged", "step": err.step, "message": str(err)}
    sink.emit(record)
    write_json(Path(output_dir) / DIVERGED, record)
    return _diverged(record)


def diverged_result(output_dir: str | Path) -> RunResult | None:
    """The result of a run that diverged in ``output_dir``, else None."""
    path = Path(output_dir) / DIVERGED
    if not path.exists():
        return None
    return _diverged(json.loads(path.read_text()))


def _diverged(record: dict) -> RunResult:
    return RunResult(
        steps=record["step"] - 1,
        final_model_dir=None,
        last_metrics={},
        reference_cache="unknown",
        stopped=False,
        padded_fraction=0.0,
        diverged=record["message"],
    )
