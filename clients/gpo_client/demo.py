"""``gpo demo``: the whole product in one command. Build the built-in task, start the local stack
if none runs, submit the demo sweep (all six losses x beta in {0.1, 1, 10}, trained on Ray Train,
sampled with vLLM, judged by the oracle), watch it, print the win-rate table and the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from gpo_core.losses import BUILTIN_LOSSES

if TYPE_CHECKING:
    from gpo_client.sdk import JobView


def demo_spec(size: str = "small", steps: int = 100, workers: int = 1, seed: int = 0) -> dict:
    return {
        "name": "demo",
        "task": {"size": size, "seed": 0},
        "losses": list(BUILTIN_LOSSES),
        "betas": [0.1, 1.0, 10.0],
        "training": {
            "steps": steps,
            "batch_size": 16,
            "lr": 5e-4,
            "workers": workers,
            "seed": seed,
            "checkpoint_every": steps // 2,
            "trace_every": steps // 4,
            "trace_prompts": 32,
        },
        "generation": {"backend": "auto", "n": 2},
        "judge": {"kind": "oracle"},
        "comparisons": {"pairwise_beta": 0.1},
    }


def run_demo(
    out: Path, size: str, steps: int, workers: int, stack_dir: Path | None, say, seed: int = 0
) -> tuple[JobView, Path | None, float]:
    """Returns (final job, report path, wall seconds)."""
    from gpo_client.sdk import Client
    from gpo_client.stack import start_stack
    from gpo_core.task.build import build_task, task_settings

    started = time.perf_counter()
    say(f"building the built-in task ({size}; cached after the first time)")
    build_task(None, task_settings(size, 0), progress=lambda message: say(f"  {message}"))
    stack = start_stack(stack_dir)
    say(f"local stack: {stack['server']} (logs in {stack['logs']})")
    spec = demo_spec(size, steps, workers, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with Client(stack["server"], stack["api_key"]) as client:
        job = client.submit(spec)
        say(f"submitted job {job.id}: {len(job.runs)} runs (spec: {out / 'spec.yaml'})")
        job = client.wait(job.id, progress=True)
        report = (
            client.download_report(job.id, out / "report.html") if job.state in ("succeeded", "inconclusive") else None
        )
    return job, report, time.perf_counter() - started
