"""Several runs at a time (``run_job(parallel=N)``, ``gpo run --parallel N``): worker processes give
the figures one process gives on the same thread count, a stop reaches every worker and the sweep
resumes, and a run's error comes back to the caller."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gpo_core.sweep import stages
from gpo_core.sweep.parallel import WorkerDied, threads_per_run, usable_cores
from gpo_core.sweep.runner import run_job
from gpo_core.sweep.spec import JobSpec

MACHINE_FIGURES = {"pairs_per_s", "tokens_per_s", "peak_memory_gib"}  # the process's speed and memory, not the run's


def spec(steps: int = 4) -> JobSpec:
    return JobSpec(
        task={"size": "small", "seed": 3},
        losses=["logistic", "square"],
        betas=[0.1, 1.0],
        training={
            "steps": steps,
            "lr": 5e-3,
            "batch_size": 8,
            "trace_every": 2,
            "checkpoint_every": 2,
            "trace_prompts": 4,
        },
        generation={"backend": "transformers", "prompts": 6},
        comparisons={"pairwise_beta": 0.1},
    )


def figures(job: Path, report_file: Path) -> dict:
    """What a sweep measured, run by run: training's last metrics, the win rate, the final KL."""
    report = json.loads(report_file.with_name("report.json").read_text())
    trained = {}
    for run in spec().run_ids():
        metrics = json.loads((job / "runs" / run / "train.json").read_text())["last_metrics"]
        trained[run] = {k: v for k, v in metrics.items() if k not in MACHINE_FIGURES}
    return {"trained": trained, "table": report["table"]}


def test_runs_in_workers_give_the_figures_of_one_process_on_as_many_threads(small_task, tmp_path) -> None:
    events: list[dict] = []
    parallel = run_job(spec(), tmp_path / "parallel", cache_dir=tmp_path / "cache", events=events.append, parallel=2)
    assert parallel is not None
    threads = threads_per_run(2)
    assert threads == max(1, len(usable_cores()) // 2)
    assert any(e.get("message") == f"training 2 runs at a time, {threads} thread(s) each" for e in events)
    # Every run's stages came back from the workers, each in its lifecycle's order.
    for run in spec().run_ids():
        states = [(e["stage"], e["state"]) for e in events if e["kind"] == "stage" and e["run"] == run]
        assert states == [(s, state) for s in ("train", "generate", "judge") for state in ("running", "done")]
    assert sum(e["kind"] == "step" for e in events) == 4 * len(spec().run_ids())

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        one = run_job(spec(), tmp_path / "one", cache_dir=tmp_path / "cache")
    finally:
        torch.set_num_threads(before)
    assert one is not None
    assert figures(tmp_path / "parallel", parallel) == figures(tmp_path / "one", one)


def test_a_stop_reaches_every_worker_and_running_again_resumes(small_task, tmp_path) -> None:
    long = spec(steps=200)  # long enough to be stopped mid-training: the stop is seen within 0.2 s
    events: list[dict] = []
    stepped = lambda: any(e["kind"] == "step" for e in events)  # noqa: E731
    job = tmp_path / "job"
    cache = tmp_path / "cache"
    assert run_job(long, job, cache_dir=cache, events=events.append, stop_requested=stepped, parallel=2) is None
    stopped = [e["run"] for e in events if e["kind"] == "stage" and e["state"] == "stopped"]
    assert stopped and not list(job.rglob("report.json"))
    assert not any((job / "runs" / run / "train.json").exists() for run in stopped)
    # The runs no worker had begun were not begun after the stop.
    begun = {e["run"] for e in events if e["kind"] == "stage" and e["stage"] == "train"}
    assert len(begun) <= 2

    again: list[dict] = []
    assert run_job(long, job, cache_dir=tmp_path / "cache", events=again.append, parallel=2) is not None
    # A stopped run that had trained resumed from the checkpoint its stop kept, not from the start.
    for run in stopped:
        trained = [e["step"] for e in events if e["kind"] == "step" and e["run"] == run]
        resumed = [e["step"] for e in again if e["kind"] == "step" and e["run"] == run]
        assert min(resumed) == (max(trained) + 1 if trained else 1)
    for run in long.run_ids():
        assert json.loads((job / "runs" / run / "train.json").read_text())["steps"] == 200


def test_a_runs_error_in_a_worker_is_raised_to_the_caller(small_task, tmp_path) -> None:
    job = tmp_path / "job"
    stages.write_job_file(spec(), job)
    broken = job / "runs" / spec().run_ids()[1] / "train.json"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("{")  # a marker cut short: the stage cannot read it
    with pytest.raises(json.JSONDecodeError):
        run_job(spec(), job, cache_dir=tmp_path / "cache", parallel=2)
    assert not list(job.rglob("report.json"))


def test_a_worker_killed_mid_run_is_a_clear_error_and_running_again_finishes(small_task, tmp_path) -> None:
    """The kernel's out-of-memory killer, say: the pool cannot go on, the caller gets one message
    that says what to do, and nothing finished is lost."""
    long, job = spec(steps=200), tmp_path / "job"
    events: list[dict] = []
    killed: list[int] = []

    def kill_a_worker_once_one_trains() -> bool:
        if not killed and any(e["kind"] == "step" for e in events):
            worker = multiprocessing.active_children()[0]
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)
        return False

    with pytest.raises(WorkerDied, match=r"a worker process died .* run again to resume, with a smaller --parallel"):
        run_job(long, job, cache_dir=tmp_path / "cache", events=events.append,
                stop_requested=kill_a_worker_once_one_trains, parallel=2)  # fmt: skip
    assert killed and not list(job.rglob("report.json"))
    assert run_job(long, job, cache_dir=tmp_path / "cache", parallel=2) is not None
    for run in long.run_ids():
        assert json.loads((job / "runs" / run / "train.json").read_text())["steps"] == 200


def test_parallel_must_be_positive(tmp_path) -> None:
    with pytest.raises(ValueError, match="parallel must be at least 1, got 0"):
        run_job(spec(), tmp_path / "job", parallel=0)


def test_gpo_run_parallel_stops_on_ctrl_c_and_says_how_to_resume(small_task, tmp_path) -> None:
    """The console script as a user runs it: Ctrl-C reaches the whole process group (the workers
    too, who leave it to the caller), the sweep stops with its checkpoints and says the command that
    resumes it, ``--parallel`` included; that command finishes it."""
    data = spec(steps=200).model_dump(mode="json", exclude_unset=True)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(data))
    gpo = [str(Path(sys.executable).with_name("gpo")), "run", "grid.yaml", "--out", "job", "--parallel", "2"]
    started = subprocess.Popen(gpo, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((tmp_path / "job" / "runs").glob("*/train/metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(started.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = started.communicate(timeout=300)
    assert started.returncode == 1, err[-3000:]
    shown = " ".join(out.split())
    assert "stopped; run again to resume: gpo run grid.yaml --out job --parallel 2" in shown
    assert "Traceback" not in err
    again = subprocess.run(gpo, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "job" / "report" / "report.json").exists()
