"""The same loop on Ray Train with two DDP workers (gloo), and a worker failure that resumes."""

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from gpo_core.train.spec import TrainingSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray

    from gpo_core.train.ray_runner import ensure_ray

    ensure_ray(temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def spec_for(task, tmp_path: Path, **overrides) -> TrainingSpec:
    fields = {
        "policy": task.artifacts.model_dir,
        "dataset": task.artifacts.train_pairs,
        "output_dir": str(tmp_path / "run"),
        "beta": 0.1,
        "lr": 1e-3,
        "batch_size": 8,
        "steps": 4,
        "workers": 2,
        "checkpoint_every": 2,
        "cache_dir": str(tmp_path / "cache"),
        **overrides,
    }
    return TrainingSpec(**fields)


def kill_rank_zero_after_step_three(metrics: Path, killed: list[int]) -> None:
    """SIGKILL the rank-0 worker (the pid of the run's start record) once step 3 is recorded."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        starts = [r for r in records if r["kind"] == "start"]
        if starts and any(r["kind"] == "step" and r["step"] >= 3 for r in records):
            os.kill(starts[0]["pid"], signal.SIGKILL)
            killed.append(starts[0]["pid"])
        time.sleep(0.02)


def test_two_workers_train_to_the_end(ray_session, small_task, tmp_path) -> None:
    from gpo_core.train.ray_runner import train_on_ray

    metrics = tmp_path / "metrics.jsonl"
    result = train_on_ray(spec_for(small_task, tmp_path), metrics)
    assert result.steps == 4 and result.final_model_dir
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == [1, 2, 3, 4]
    assert all(r["pairs_per_s"] > 0 for r in steps if r["kind"] == "step")
    # the step's metrics are reduced over both workers: 2 x 8 pairs, not rank 0's 8
    assert all(r["pairs"] == 16 for r in steps if r["kind"] == "step")
    (start,) = [r for r in steps if r["kind"] == "start"]
    assert start["world_size"] == 2 and start["hosts"] == [socket.gethostname()] * 2  # one machine here


def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_session, small_task, tmp_path) -> None:
    """SIGKILL the rank-0 worker after step 3: FailureConfig restarts the worker group, which
    resumes from the last reported checkpoint and ends with exactly the requested steps."""
    from gpo_core.train.ray_runner import train_on_ray

    metrics = tmp_path / "metrics.jsonl"
    killed: list[int] = []
    killer = threading.Thread(target=kill_rank_zero_after_step_three, args=(metrics, killed))
    killer.start()
    result = train_on_ray(spec_for(small_task, tmp_path, steps=40, checkpoint_every=2), metrics)
    killer.join()
    assert killed, "the worker was never killed"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    resumed = [r for r in records if r["kind"] == "resumed"]
    assert resumed and resumed[0]["step"] >= 2 and resumed[0]["step"] % 2 == 0
    assert result.steps == 40 and result.final_model_dir
    assert [r for r in records if r["kind"] == "end"][-1]["step"] == 40


def test_stop_request_ends_a_ray_run_within_seconds(ray_session, small_task, tmp_path) -> None:
    from gpo_core.train.ray_runner import request_stop, train_on_ray

    spec = spec_for(small_task, tmp_path, steps=5000, checkpoint_every=0)
    metrics = tmp_path / "metrics.jsonl"
    requested: list[float] = []

    def stop_after_step_two() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(line).get("step", 0) >= 2 and json.loads(line)["kind"] == "step" for line in lines):
                request_stop(spec.output_dir)
                requested.append(time.monotonic())
                return
            time.sleep(0.05)

    stopper = threading.Thread(target=stop_after_step_two)
    stopper.start()
    result = train_on_ray(spec, metrics)
    ended = time.monotonic()
    stopper.join()
    assert requested and ended - requested[0] < 15
    assert result.stopped and 2 <= result.steps < 5000
    end = [json.loads(line) for line in metrics.read_text().splitlines()][-1]
    assert end["kind"] == "end" and end["stopped"] and end["step"] == result.steps
    assert (Path(spec.output_dir) / "checkpoints" / f"step-{result.steps:07d}" / "config.json").exists()


TOKEN_RUN = """
import json, os, subprocess, sys, threading
from pathlib import Path
import psutil
from gpo_core.train.ray_runner import ensure_ray, train_on_ray
from gpo_core.train.spec import TrainingSpec

spec = TrainingSpec(**json.loads(sys.argv[1]))
ensure_ray(temp_dir=sys.argv[2])
import ray

gcs = ray.get_runtime_context().gcs_address
listening, trained = set(), threading.Event()

def watch():  # while the run trains: its workers' process group listens only then
    while not trained.is_set():
        ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
        listening.update(c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in ours)
        trained.wait(0.1)

watcher = threading.Thread(target=watch)
watcher.start()
result = train_on_ray(spec, Path(spec.output_dir) / "metrics.jsonl")
trained.set()
watcher.join()
listening = sorted(listening)
intruder = "import ray; ray.init(address=%r); print('INTRUDER CONNECTED')" % gcs
env = {"PATH": "/usr/bin:/bin", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
try:  # refused at once, or left retrying: either way never connected
    seen = subprocess.run([sys.executable, "-c", intruder], env=env, capture_output=True, text=True, timeout=30)
    code, out = seen.returncode, seen.stdout[-200:]
except subprocess.TimeoutExpired as waited:
    code, out = "timed out", (waited.stdout or b"").decode()[-200:]
print(json.dumps({"steps": result.steps, "gcs": gcs, "intruder": code, "out": out, "listening": listening}))
"""


def test_a_local_ray_with_a_token_trains_and_refuses_clients_without_it(small_task, tmp_path) -> None:
    """What `gpo up` runs: Ray started by the trainer with RAY_AUTH_MODE=token. Ray Train works under
    the token; a client without it cannot join the cluster (so runs no code on it); and a Ray of the
    task's own listens on loopback only, while it trains as after (by default Ray's ports, its
    autoscaler metrics included, and torch's rendezvous store listen on every interface)."""
    import subprocess
    import sys
    import tempfile

    spec = spec_for(small_task, tmp_path, steps=2).model_dump(mode="json")
    ray_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 64, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", TOKEN_RUN, json.dumps(spec), ray_dir], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["steps"] == 2
    assert outcome["intruder"] != 0 and "INTRUDER CONNECTED" not in outcome["out"]
    assert outcome["listening"] and set(outcome["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def final_weights(result) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(result.final_model_dir) / "model.safetensors")


def test_fsdp_trains_as_ddp_does(ray_session, small_task, tmp_path) -> None:
    """Two workers, fp32: per-step losses, the KL / square-loss traces (sampled on the main worker
    from the gathered weights) and the final weights of FSDP equal DDP's within 1e-5."""
    import torch

    from gpo_core.train.ray_runner import train_on_ray

    runs = {}
    for strategy in ("ddp", "fsdp"):
        metrics = tmp_path / strategy / "metrics.jsonl"
        spec = spec_for(
            small_task, tmp_path / strategy, strategy=strategy, steps=5, checkpoint_every=2, trace_every=5,
            eval_pairs=small_task.artifacts.eval_pairs, eval_prompts=small_task.artifacts.eval_prompts, trace_prompts=8,
        )  # fmt: skip
        result = train_on_ray(spec, metrics)
        assert result.steps == 5
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        runs[strategy] = (records, final_weights(result))
    (ddp_records, ddp_weights), (fsdp_records, fsdp_weights) = runs["ddp"], runs["fsdp"]
    ddp_steps, fsdp_steps = ([r for r in rs if r["kind"] in ("step", "trace")] for rs in (ddp_records, fsdp_records))
    assert [(r["kind"], r["step"]) for r in fsdp_steps] == [(r["kind"], r["step"]) for r in ddp_steps]
    assert len([r for r in fsdp_steps if r["kind"] == "trace"]) == 2  # at steps 0 and 5
    for fsdp, ddp in zip(fsdp_steps, ddp_steps, strict=True):
        for key in ("loss", "grad_norm", "square_loss", "kl"):
            if key in ddp:
                assert fsdp[key] == pytest.approx(ddp[key], rel=1e-5, abs=1e-5), (fsdp["step"], key)
    assert fsdp_weights.keys() == ddp_weights.keys()
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(fsdp_weights[name], tensor, rtol=0, atol=1e-5)
    checkpoint = tmp_path / "fsdp" / "run" / "checkpoints" / "step-0000004"
    assert (checkpoint / "sharded" / ".metadata").exists() and (checkpoint / "model.safetensors").exists()


def test_a_killed_fsdp_worker_resumes_exactly_from_the_sharded_checkpoint(ray_session, small_task, tmp_path) -> None:
    """SIGKILL rank 0 after step 3: the worker group restarts from the step-2 sharded checkpoint
    (model and optimizer shards) and ends with the weights of an uninterrupted run."""
    import torch

    from gpo_core.train.ray_runner import train_on_ray

    whole = train_on_ray(spec_for(small_task, tmp_path / "whole", strategy="fsdp", steps=6), tmp_path / "whole.jsonl")
    metrics = tmp_path / "killed.jsonl"
    killed: list[int] = []
    killer = threading.Thread(target=kill_rank_zero_after_step_three, args=(metrics, killed))
    killer.start()
    resumed = train_on_ray(spec_for(small_task, tmp_path / "killed", strategy="fsdp", steps=6), metrics)
    killer.join()
    assert killed, "the worker was never killed"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "resumed"] in ([2], [4])
    assert resumed.steps == 6
    expected = final_weights(whole)
    for name, tensor in final_weights(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)
