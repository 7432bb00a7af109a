"""One entry point for a training run, wherever ``spec.workers`` puts it: in this process (0) or
on Ray Train workers. Either way the metrics go to ``OUTPUT_DIR/metrics.jsonl`` and to the
caller's sink, and a stop request ends the run at its next step with a checkpoint kept."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from gpo_core.train.loop import RunContext, RunResult, train
from gpo_core.train.metrics import FanOut, JsonlSink, ListSink, MetricsSink, follow_jsonl
from gpo_core.train.spec import TrainingSpec


def metrics_path(spec: TrainingSpec) -> Path:
    return Path(spec.output_dir) / "metrics.jsonl"


def run_training(
    spec: TrainingSpec, sink: MetricsSink | None = None, stop_requested: Callable[[], bool] = lambda: False
) -> RunResult:
    """Train (or resume) ``spec``. On Ray, rank 0 writes the metrics file and a watcher thread
    forwards its new lines to ``sink`` and turns a stop request into the run's STOP file."""
    path = metrics_path(spec)
    if spec.workers == 0:
        metrics = JsonlSink(path)
        try:
            return train(spec, FanOut(metrics, sink) if sink else metrics, RunContext(should_stop=stop_requested))
        finally:
            metrics.close()

    from gpo_core.train.ray_runner import request_stop, train_on_ray

    def poll() -> None:
        if stop_requested():
            request_stop(spec.output_dir)

    finished = threading.Event()
    watcher = threading.Thread(
        target=follow_jsonl, args=(path, sink or ListSink(), finished, poll), name="ray-run-watcher"
    )
    watcher.start()
    try:
        return train_on_ray(spec, metrics_path=path)
    finally:
        finished.set()
        watcher.join()
