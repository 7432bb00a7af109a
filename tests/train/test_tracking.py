"""report_to: a run's metrics in TensorBoard event files (read back with TensorBoard's own
reader) and in an MLflow tracking store (a local SQLite store, read back with MLflow's client),
a resumed run continuing the same MLflow run."""

import json
import shutil
from pathlib import Path

import pytest

from gpo_core.train.launch import run_training
from tests.train.test_loop import make_spec

pytest.importorskip("tensorboard", reason="the tracking extra is not installed")
pytest.importorskip("mlflow", reason="the tracking extra is not installed")


def step_losses(output_dir: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "step"}


def test_tensorboard_event_files_hold_every_step(small_task, tmp_path, cache_dir) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = make_spec(small_task, tmp_path, cache_dir, steps=4, report_to=["tensorboard"])
    run_training(spec)
    events = EventAccumulator(str(Path(spec.output_dir) / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx(list(step_losses(spec.output_dir).values()), rel=1e-6)
    assert "data/pairs" in events.Tags()["scalars"]


def test_mlflow_run_holds_params_and_metrics_and_a_resume_continues_it(small_task, tmp_path, cache_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = make_spec(small_task, tmp_path, cache_dir, steps=4, checkpoint_every=2, report_to=["mlflow"])
    run_training(spec)
    # A crash after the last step, before the run was recorded as finished: it resumes from step 2.
    (Path(spec.output_dir) / "result.json").unlink()
    shutil.rmtree(Path(spec.output_dir) / "final")
    run_training(spec)
    marker = json.loads((Path(spec.output_dir) / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=marker["tracking_uri"])
    run = client.get_run(marker["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["loss"] == "logistic" and float(run.data.params["beta"]) == 0.1
    history = client.get_metric_history(marker["run_id"], "train/loss")
    latest = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
    assert sorted(latest) == [1, 2, 3, 4]
    assert [latest[s] for s in (1, 2, 3, 4)] == pytest.approx(list(step_losses(spec.output_dir).values()), rel=1e-6)
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the resume did not start a second run
