"""Run the training loop on Ray Train: ``TorchTrainer`` with DDP (gloo on CPU, nccl on GPU).

Each worker runs :func:`gpo_core.train.loop.train` with a :class:`RunContext` that wraps the model
in DDP, reports checkpoints through ``ray.train.report`` and resumes from
``ray.train.get_checkpoint()`` after a worker failure (``FailureConfig``), so a run ends with
exactly the requested steps. A stop request is a file (``STOP`` in the run folder); workers agree
on it with an all-reduce at every step, so they all stop at the same step.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import torch

from gpo_core.train.loop import train
from gpo_core.train.metrics import JsonlSink, ListSink
from gpo_core.train.run import DIVERGED, NonFiniteLossError, RunContext, RunResult, diverged_result, record_divergence
from gpo_core.train.spec import TrainingSpec

STOP_FILE = "STOP"

# Quiet, fast Ray Train settings for a single machine (see docs/training.md).
RAY_ENVIRONMENT = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def request_stop(output_dir: str | Path) -> None:
    """Ask a running job to stop at its next step, keeping its last checkpoint."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / STOP_FILE).touch()


def _numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    spec = TrainingSpec(**config["spec"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    stop_file = Path(spec.output_dir) / STOP_FILE

    def should_stop() -> bool:
        flag = torch.tensor([1.0 if stop_file.exists() else 0.0])
        if world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_checkpoint(metrics: dict, folder: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(_numeric(metrics), checkpoint=checkpoint)

    def barrier() -> None:
        if world_size > 1:
            torch.distributed.barrier()

    def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
        if world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    # Where each worker runs, by rank: its host, and its Ray node (nodes on one machine share a host name).
    place = (socket.gethostname(), ray.get_runtime_context().get_node_id())
    places: list = [place]
    if world_size > 1:
        places = [None] * world_size
        torch.distributed.all_gather_object(places, place)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        resume = Path(checkpoint.path)  # local storage: the persisted folder itself
    sink = JsonlSink(config["metrics_path"]) if rank == 0 and config.get("metrics_path") else ListSink()
    run_context = RunContext(
        rank=rank,
        world_size=world_size,
        device=ray.train.torch.get_device(),
        on_checkpoint=on_checkpoint,
        resume_from=resume,
        should_stop=should_stop,
        wrap_model=ray.train.torch.prepare_model,
        barrier=barrier,
        all_reduce=all_reduce,
        hosts=[host for host, _ in places],
        nodes=[node for _, node in places],
    )
    try:
        train(spec, sink, run_context)
    except NonFiniteLossError as err:  # every worker sees the same all-reduced loss, and stops here
        if rank == 0:
            record_divergence(spec.output_dir, err, sink)
    finally:
        sink.close()


# A Ray of this process's own (no RAY_ADDRESS) listens on loopback only: by default Ray binds its
# GCS, raylet, workers and autoscaler metrics (port 44217) to every interface, which a task's
# private Ray has no use for. Read by Ray when it is first imported.
LOCAL_RAY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def ensure_ray(temp_dir: str | None = None) -> None:
    local = os.environ.get("RAY_ADDRESS") is None
    for key, value in {**RAY_ENVIRONMENT, **(LOCAL_RAY_ENVIRONMENT if local else {})}.items():
        os.environ.setdefault(key, value)
    import ray

    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS", "local"),
            include_dashboard=False,
            object_store_memory=200 * 2**20 if os.environ.get("RAY_ADDRESS") is None else None,
            logging_config=ray.LoggingConfig(log_level="ERROR"),
            _temp_dir=temp_dir,
        )


def train_on_ray(spec: TrainingSpec, metrics_path: str | Path | None = None, max_failures: int = 2) -> RunResult:
    """Run ``spec`` with ``spec.workers`` Ray Train workers and wait for the result."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from gpo_core.train.loopback_store import LoopbackTorchConfig

    ensure_ray()
    output_dir = Path(spec.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / STOP_FILE).unlink(missing_ok=True)
    (output_dir / DIVERGED).unlink(missing_ok=True)
    name = "gpo-" + hashlib.sha256(str(output_dir).encode()).hexdigest()[:12]
    local = os.environ.get("RAY_ADDRESS") is None
    trainer = TorchTrainer(
        _worker,
        torch_config=LoopbackTorchConfig() if local else None,
        train_loop_config={"spec": spec.model_dump(), "metrics_path": str(metrics_path) if metrics_path else None},
        scaling_config=ScalingConfig(
            num_workers=max(1, spec.workers), use_gpu=spec.use_gpu, placement_strategy=spec.placement.upper()
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(output_dir / "ray"),
            # Train v2's FailureConfig (the one ray.train gives at run time) has the controller's
            # limit; the v1 class mypy reads from ray.train's static imports does not.
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=0),  # type: ignore[call-arg]
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if (diverged := diverged_result(output_dir)) is not None:
        return diverged
    metrics = result.metrics or {}
    final = output_dir / "final"
    return RunResult(
        steps=int(metrics.get("step", 0)),
        final_model_dir=str(final) if final.exists() else None,
        last_metrics=metrics,
        reference_cache="unknown",
        stopped=not final.exists(),
        padded_fraction=float(metrics.get("padded_fraction", 0.0)),
    )
