"""Training metrics to the experiment trackers a user already has (``report_to`` in the spec):
TensorBoard event files and MLflow runs, beside ``metrics.jsonl`` (which stays the record).

- ``tensorboard``: ``OUTPUT_DIR/tensorboard/`` (``tensorboard --logdir OUTPUT_DIR``);
- ``mlflow``: the tracking server or store of ``$MLFLOW_TRACKING_URI``, else a SQLite store in
  ``OUTPUT_DIR/mlflow.db``; experiment ``$MLFLOW_EXPERIMENT_NAME`` or ``gpo``. A resumed run
  logs into the same MLflow run (its id is kept in ``OUTPUT_DIR/mlflow_run.json``).

Step records become ``train/NAME``, trace records ``trace/NAME`` and the data record
``data/NAME``, each at its step. Both need the ``tracking`` extra (``pip install
'gpo-platform[tracking]'``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from gpo_core.errors import GPOError
from gpo_core.train.metrics import MetricsSink

PREFIXES = {"step": "train", "trace": "trace", "data": "data"}
SKIPPED = {"kind", "step", "steps", "pid", "world_size"}


class TrackingError(GPOError):
    """A tracker that cannot be used (its package missing, its store unreachable)."""


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers under the tracker's names; other records give nothing."""
    prefix = PREFIXES.get(record.get("kind", ""))
    if prefix is None or not isinstance(record.get("step"), int):
        return {}
    return {
        f"{prefix}/{key}": float(value)
        for key, value in record.items()
        if key not in SKIPPED and isinstance(value, int | float) and not isinstance(value, bool)
    }


class TensorBoardSink:
    def __init__(self, output_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackingError(
                "report_to tensorboard needs the tensorboard package (pip install 'gpo-platform[tracking]')"
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def emit(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    def __init__(self, output_dir: str | Path, run_name: str, params: dict):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackingError(
                "report_to mlflow needs the mlflow-skinny package (pip install 'gpo-platform[tracking]')"
            ) from None
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        marker = output_dir / "mlflow_run.json"
        try:
            if marker.exists():  # a resumed run goes on in its MLflow run
                self.run_id = json.loads(marker.read_text())["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "gpo")
                experiment = self.client.get_experiment_by_name(name)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
                self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
                for key, value in params.items():
                    self.client.log_param(self.run_id, key, str(value)[:6000])
                marker.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": uri}))
        except Exception as err:  # the store's own errors: a server away, a locked database
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise TrackingError(f"MLflow at {uri}: {reason}") from None
        self.finished = False

    def emit(self, record: dict) -> None:
        from mlflow.entities import Metric

        values = scalars(record)
        if values:
            now = int(time.time() * 1000)
            metrics = [Metric(name, value, now, record["step"]) for name, value in values.items()]
            self.client.log_batch(self.run_id, metrics=metrics)
        if record.get("kind") == "end":
            self.finished = not record.get("stopped")

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if self.finished else "KILLED")


def tracking_sinks(report_to: Sequence[str], output_dir: str | Path, run_name: str, params: dict) -> list[MetricsSink]:
    """One sink per tracker named in ``report_to``."""
    sinks: list[MetricsSink] = []
    for name in report_to:
        if name == "tensorboard":
            sinks.append(TensorBoardSink(output_dir))
        elif name == "mlflow":
            sinks.append(MLflowSink(output_dir, run_name, params))
    return sinks
