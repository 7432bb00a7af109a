"""The multi-node path on one machine: a Ray head and a second Ray node joined to it (``ray start
--address``, resources of its own), and an FSDP run with one worker on each node."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.ports import free_port

pytestmark = pytest.mark.slow

DRIVER = """
import json, sys
from gpo_core.train.ray_runner import train_on_ray
from gpo_core.train.spec import TrainingSpec
spec = TrainingSpec(**json.loads(sys.argv[1]))
result = train_on_ray(spec, sys.argv[2])
print(json.dumps({"steps": result.steps, "final": result.final_model_dir}))
"""

NODES = """
import json, ray
ray.init(logging_config=ray.LoggingConfig(log_level="ERROR"))
print(json.dumps([n["NodeID"] for n in ray.nodes() if n["Alive"]]))
"""


@pytest.fixture
def two_nodes():
    """A head (2 CPUs: the Train controller and one worker) and a second node (1 CPU), each a
    ``ray start --block`` process group, stopped with SIGTERM afterwards."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    ray = str(Path(sys.executable).parent / "ray")
    common = ["--object-store-memory", str(100 * 2**20), "--block", "--disable-usage-stats"]
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
    head = [ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
            f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1", *common]  # fmt: skip
    second = [ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--node-ip-address=127.0.0.1", *common]
    processes = [subprocess.Popen(head, env=env, start_new_session=True, stdout=subprocess.DEVNULL)]
    address = f"127.0.0.1:{port}"
    try:
        time.sleep(3)
        processes.append(subprocess.Popen(second, env=env, start_new_session=True, stdout=subprocess.DEVNULL))
        deadline, nodes = time.monotonic() + 90, []
        while time.monotonic() < deadline and len(nodes) < 2:
            out = subprocess.run([sys.executable, "-c", NODES], env={**env, "RAY_ADDRESS": address},
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            nodes = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []
            time.sleep(1)
        assert len(nodes) == 2, "the second Ray node did not join the head"
        yield address, env, nodes
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_an_fsdp_run_places_one_worker_on_each_node(two_nodes, small_task, tmp_path) -> None:
    address, env, nodes = two_nodes
    spec = {
        "policy": small_task.artifacts.model_dir, "dataset": small_task.artifacts.train_pairs,
        "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "beta": 0.1, "lr": 1e-3,
        "batch_size": 8, "steps": 4, "checkpoint_every": 2, "workers": 2, "strategy": "fsdp", "placement": "spread",
    }  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec), str(metrics)],
                          env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["steps"] == 4 and outcome["final"]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    (start,) = [r for r in records if r["kind"] == "start"]
    assert start["world_size"] == 2 and sorted(start["nodes"]) == sorted(nodes)  # one worker on each node
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "checkpoints" / "step-0000002" / "sharded" / ".metadata").exists()
