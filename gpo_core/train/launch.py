"""One entry point for a training run, wherever ``spec.workers`` puts it: in this process (0) or
on Ray Train workers. Either way the metrics go to ``OUTPUT_DIR/metrics.jsonl`` and to the
caller's sink, and a stop request ends the run at its next step with a checkpoint kept."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from gpo_core.data import write_json
from gpo_core.identity import DifferentSpec, claim, content_digest
from gpo_core.inputs import path_fields
from gpo_core.train.checkpoints import CHECKPOINTS
from gpo_core.train.loop import train
from gpo_core.train.metrics import FanOut, JsonlSink, ListSink, MetricsSink, follow_jsonl, jsonl_end
from gpo_core.train.run import (
    DIVERGED,
    METRICS_FILE,
    NonFiniteLossError,
    RunContext,
    RunResult,
    TrainingError,
    record_divergence,
)
from gpo_core.train.spec import TrainingSpec
from gpo_core.train.tracking import TrackingError, tracking_sinks

RUN_RECORD = "run.json"  # the identity of the run this folder holds
RESULT = "result.json"  # written when the run finished: its presence means "trained"
# Options that change how a run is carried out or logged, not what it computes.
NOT_DETERMINING = {
    "output_dir",
    "cache_dir",
    "log_every",
    "checkpoint_every",
    "trace_at_start",
    "use_gpu",
    "placement",
    "report_to",
    "logprob_chunk",
    "gradient_checkpointing",
}
INPUTS = path_fields(TrainingSpec)  # read by content for the run's identity


def metrics_path(spec: TrainingSpec) -> Path:
    return Path(spec.output_dir) / METRICS_FILE


def training_identity(spec: TrainingSpec) -> dict:
    """The settings that determine a run's result, its inputs by content (a copied model folder is
    the same model; a dataset edited in place is not the same dataset)."""
    settings = spec.model_dump(exclude=NOT_DETERMINING | set(INPUTS) | {"beta", "beta_ipo"})
    identity = {**settings, "beta": spec.effective_beta}
    paths = {**spec.model_dump(include=set(INPUTS)), "reference": spec.reference_path, "tokenizer": spec.tokenizer_path}
    for name, path in paths.items():
        if path is not None:
            try:
                identity[f"{name}.content"] = content_digest(path)
            except OSError as err:
                raise TrainingError(f"{name}: cannot read {path} ({err.strerror or err})") from None
    return identity


def claim_output_dir(spec: TrainingSpec) -> RunResult | None:
    """Tie ``spec.output_dir`` to this spec: the finished result when the same spec already ran to
    the end there, else None (train, resuming from a checkpoint if there is one). A folder that
    holds another spec's run is refused, naming what changed, never resumed or overwritten."""
    output_dir = Path(spec.output_dir)
    record = output_dir / RUN_RECORD
    hint = "give another output_dir, or delete this one to start over"
    if not record.exists() and any((output_dir / name).exists() for name in (CHECKPOINTS, "final", RESULT)):
        raise TrainingError(f"{output_dir} holds a run with no record of its spec ({RUN_RECORD}); {hint}")
    try:
        claim(record, training_identity(spec), "training run", hint)
    except DifferentSpec as err:
        raise TrainingError(str(err)) from None
    if (output_dir / RESULT).exists():
        return RunResult(**{**json.loads((output_dir / RESULT).read_text()), "reference_cache": "not used"})
    return None


def _finished(spec: TrainingSpec, result: RunResult) -> RunResult:
    if not result.stopped:
        write_json(Path(spec.output_dir) / RESULT, asdict(result))
    return result


def run_training(
    spec: TrainingSpec, sink: MetricsSink | None = None, stop_requested: Callable[[], bool] = lambda: False
) -> RunResult:
    """Train (or resume) ``spec``; a run this spec already finished in its folder is returned as it
    was, not trained again (the sink gets one ``finished_before`` record). On Ray, rank 0 writes
    the metrics file and a watcher thread forwards its new lines to ``sink`` and turns a stop
    request into the run's STOP file."""
    earlier = claim_output_dir(spec)
    if earlier is not None:
        if sink is not None:
            sink.emit({"kind": "finished_before", "step": earlier.steps, "final_model_dir": earlier.final_model_dir})
        return earlier
    trackers = _trackers(spec)
    sink = FanOut(*([sink] if sink else []), *trackers) if trackers else sink
    try:
        return _run(spec, sink, stop_requested)
    finally:
        for tracker in trackers:
            tracker.close()


def _trackers(spec: TrainingSpec) -> list[MetricsSink]:
    """The experiment trackers of ``report_to`` (a sweep's run is named after its run folder)."""
    if not spec.report_to:
        return []
    folder = Path(spec.output_dir)
    name = folder.parent.name if folder.name == "train" else folder.name
    params = {k: v for k, v in training_identity(spec).items() if not k.endswith(".content")}
    try:
        return tracking_sinks(spec.report_to, folder, name, params)
    except TrackingError as err:
        raise TrainingError(str(err)) from None


def _run(spec: TrainingSpec, sink: MetricsSink | None, stop_requested: Callable[[], bool]) -> RunResult:
    path = metrics_path(spec)
    if spec.workers == 0:
        (Path(spec.output_dir) / DIVERGED).unlink(missing_ok=True)  # (train_on_ray does the same on Ray)
        metrics = JsonlSink(path)
        both = FanOut(metrics, sink) if sink else metrics
        try:
            return _finished(spec, train(spec, both, RunContext(should_stop=stop_requested)))
        except NonFiniteLossError as err:
            return _finished(spec, record_divergence(spec.output_dir, err, both))
        finally:
            metrics.close()

    from gpo_core.train.ray_runner import request_stop, train_on_ray

    def poll() -> None:
        if stop_requested():
            request_stop(spec.output_dir)

    done = threading.Event()
    follow = (path, sink or ListSink(), done, poll, jsonl_end(path))  # the start: before any worker writes
    watcher = threading.Thread(target=follow_jsonl, args=follow, name="ray-run-watcher")
    watcher.start()
    try:
        return _finished(spec, train_on_ray(spec, metrics_path=path))
    finally:
        done.set()
        watcher.join()
