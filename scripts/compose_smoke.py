"""The compose stack, really run: up, a job through the SDK on the published port, then a second
job while its Ray worker, its generator and Redis are killed or restarted, then down.

    python scripts/compose_smoke.py [--image gpo-platform:cpu] [--redis-image gpo-redis:bookworm]

Run by scripts/compose-smoke.sh (which builds the images first). Needs a Docker engine and the
images; prints each figure (time to healthy, each job's wall time, the recovery after each kill)
and exits non-zero at the first check that fails, after `docker compose down -v`. The host
reaches the stack only through the control service's port, published on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients"))

from gpo_client import Client  # noqa: E402

TENANT = "smoke"
PROMPTS = 48  # evaluation prompts each job generates for and judges: all of the small task's
STEPS = 3000  # of the second job (about 20 steps/s here): long enough to kill and restart mid-run
CHECKPOINT_EVERY = 50
SAMPLES = 16  # responses per prompt in the second job: seconds of work, to kill the generator mid-task


class SmokeFailure(AssertionError):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SmokeFailure(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except SmokeFailure:
            raise
        except Exception:  # the stack is still coming up, or restarting: ask again
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise SmokeFailure(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Stack:
    """One compose project: its own containers, network and volumes, removed by :meth:`down`."""

    def __init__(self, image: str, redis_image: str, workers: int):
        self.project = f"gpo-smoke-{os.getpid()}"
        self.port = free_port()
        self.key = secrets.token_hex(16)
        self.redis_password = secrets.token_hex(16)
        compose = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
        self.compose = [compose, "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), "--profile", "cpu"]
        self.workers = workers
        self.env = {
            **os.environ,
            "GPO_IMAGE": image,
            "GPO_REDIS_IMAGE": redis_image,
            "GPO_API_KEYS": f"{self.key}:{TENANT}",
            "GPO_REDIS_PASSWORD": self.redis_password,
            "GPO_PUBLISHED_ADDRESS": "127.0.0.1",
            "GPO_PUBLISHED_PORT": str(self.port),
            "GPO_MAX_TRAIN_WORKERS": str(workers),
            "GPO_CLAIM_IDLE_S": "15",  # a killed service's task is reclaimed after this
            "GPO_HEARTBEAT_S": "3",
        }
        self.url = f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, check_rc: bool = True, capture: bool = True) -> str:
        done = subprocess.run([*self.compose, *args], env=self.env, capture_output=capture, text=True)
        if check_rc and done.returncode != 0:
            raise SmokeFailure(f"docker compose {' '.join(args)} failed:\n{(done.stderr or '')[-3000:]}")
        return done.stdout or ""

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}-{service}-{index}"

    def docker(self, *args: str) -> str:
        done = subprocess.run(["docker", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise SmokeFailure(f"docker {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
        return done.stdout

    def health(self) -> dict[str, str]:
        """Each container's state, with its health where it has a check."""
        states = {}
        for line in self.run("ps", "--all", "--format", "json").splitlines():
            for entry in json.loads(line) if line.startswith("[") else [json.loads(line)]:
                states[entry["Name"]] = entry.get("Health") or entry.get("State")
        return states

    def ray_nodes(self) -> int:
        """Alive Ray nodes with CPUs (the workers; the head has none)."""
        code = "import ray; ray.init(address='auto', logging_level='ERROR'); print(sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU', 0) > 0))"  # noqa: E501
        out = self.docker("exec", self.container("ray-head"), "python", "-c", code)
        return int(out.strip().splitlines()[-1])

    def redis(self, *command: str) -> str:
        password = ["-a", self.redis_password, "--no-auth-warning"]
        return self.docker("exec", self.container("redis"), "redis-cli", *password, *command).strip()

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "80", check_rc=False)

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "--timeout", "20", check_rc=False)


def restart(stack: Stack, container: str, when: str) -> None:
    """``docker kill`` the container, then start it again (as an orchestrator would) unless its
    restart policy already has."""
    stack.docker("kill", container)
    print(f"killed {container} {when}", flush=True)
    time.sleep(2)
    if stack.docker("inspect", "-f", "{{.State.Running}}", container).strip() != "true":
        stack.docker("start", container)


def task_log(stack: Stack, container: str, job_id: str, message: str) -> bool:
    """Does the container's log (this instance's and those before a restart) hold ``message``
    for a task of ``job_id``?"""
    done = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    log = done.stdout + done.stderr  # the services log to stderr
    return any(f'"{message}"' in line and job_id in line for line in log.splitlines())


def small_sweep(
    name: str, steps: int, workers: int, backend: str, samples: int = 1, checkpoint_every: int = 5, lr: float = 5e-4
) -> dict:
    return {
        "name": name,
        "task": {"size": "small", "seed": 3},
        "losses": ["logistic"],
        "betas": [0.1],
        "training": {
            "steps": steps,
            "lr": lr,
            "batch_size": 8,
            "workers": workers,
            "placement": "spread",
            "checkpoint_every": 5,
            "trace_every": 0,
        },
        "generation": {"backend": backend, "prompts": PROMPTS, "n": samples},
    }


def artifact_lines(client: Client, job_id: str, run_id: str, name: str) -> list[dict]:
    return [json.loads(line) for line in client.artifact(job_id, f"runs/{run_id}/{name}").decode().splitlines()]


def check_once_each(client: Client, job_id: str, run_id: str, samples: int = 1) -> None:
    """Nothing duplicated: one response per (prompt, sample), one judged comparison for each."""
    responses = artifact_lines(client, job_id, run_id, "responses.jsonl")
    keys = {(r["prompt_id"], r.get("sample", 0)) for r in responses}
    expected = PROMPTS * samples
    check(len(responses) == len(keys) == expected, f"{len(responses)} responses, {len(keys)} distinct, not {expected}")
    judged = json.loads(client.artifact(job_id, f"runs/{run_id}/judgement.json"))
    check(judged["win_rate"]["comparisons"] == expected, f"judged {judged['win_rate']['comparisons']} comparisons")
    steps = [r["step"] for r in artifact_lines(client, job_id, run_id, "train/metrics.jsonl") if r["kind"] == "step"]
    check(steps == sorted(set(steps)), "each training step is recorded once, in order (a resumed run rewinds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=os.environ.get("GPO_IMAGE", "gpo-platform:cpu"))
    parser.add_argument("--redis-image", default=os.environ.get("GPO_REDIS_IMAGE", "gpo-redis:bookworm"))
    parser.add_argument("--workers", type=int, default=2, help="Ray worker containers (one node each)")
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end (for a look)")
    args = parser.parse_args()

    # SIGTERM (a CI timeout, a kill) ends the run through the finally below: the stack goes down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stack = Stack(args.image, args.redis_image, args.workers)
    figures: dict[str, str] = {}
    started = time.monotonic()
    try:
        stack.run("up", "-d", "--scale", f"ray-worker={args.workers}")
        client = Client(stack.url, stack.key, timeout=60)
        wait_for(lambda: client.list() is not None, 300, "the control service on the published port")
        wait_for(lambda: all(s == "healthy" for s in stack.health().values()), 300, "every container healthy", 3)
        wait_for(lambda: stack.ray_nodes() == args.workers, 120, f"{args.workers} Ray worker nodes", 3)
        figures["time to healthy"] = f"{time.monotonic() - started:.0f} s"
        print(f"stack up, {len(stack.health())} containers healthy, {args.workers} Ray workers: "
              f"{figures['time to healthy']}", flush=True)  # fmt: skip

        # 1. A sweep through the SDK, trained on both Ray workers (one container each).
        job_started = time.monotonic()
        # lr 5e-3: ten steps at the task's 5e-4 may leave every answer equal to pi_ref's, all ties
        job = client.submit(small_sweep("smoke-1", steps=10, workers=args.workers, backend="auto", lr=5e-3))
        done = client.wait(job.id)
        check(done.state == "succeeded", f"job 1 ended {done.state}: {done}")
        figures["job 1 (build the task, train on 2 nodes, generate, judge, report)"] = (
            f"{time.monotonic() - job_started:.0f} s"
        )
        run = done.runs[0].id
        start = [r for r in artifact_lines(client, job.id, run, "train/metrics.jsonl") if r["kind"] == "start"][-1]
        workers = {stack.docker("inspect", "-f", "{{.Config.Hostname}}", stack.container("ray-worker", i)).strip()
                   for i in range(1, args.workers + 1)}  # fmt: skip
        check(start["world_size"] == args.workers and set(start["hosts"]) == workers,
              f"trained on {start['hosts']}, the worker containers are {sorted(workers)}")  # fmt: skip
        check_once_each(client, job.id, run)
        backends = {r["backend"] for r in artifact_lines(client, job.id, run, "responses.jsonl")}
        check(backends == {"vllm"}, f"job 1 was sampled with {backends}, not the image's vLLM")
        with tempfile.TemporaryDirectory() as folder:
            report = client.download_report(job.id, Path(folder) / "report.html")
            check("<img" in report.read_text() and report.with_name("report.json").exists(), "report downloaded")
        print(f"job 1 succeeded in {figures['job 1 (build the task, train on 2 nodes, generate, judge, report)']}"
              f"; trained on hosts {start['hosts']}, sampled with vLLM; report downloaded", flush=True)  # fmt: skip

        # 2. A second job while a Ray worker, Redis and the generator go down, in that order.
        job_started = time.monotonic()
        spec = small_sweep("smoke-2", STEPS, args.workers, "transformers", SAMPLES, CHECKPOINT_EVERY)
        job = client.submit(spec)
        run = job.runs[0].id

        def starts() -> list[dict]:
            records = artifact_lines(client, job.id, run, "train/metrics.jsonl")
            return [r for r in records if r["kind"] == "start"]

        def training_until(step: int) -> bool:
            """Has the run reached ``step``? A run that left training first fails the test: the
            disruption meant for mid-training would land after it."""
            run_now = client.get(job.id).runs[0]
            check(run_now.stage == "train", f"training ended (stage {run_now.stage}) before step {step}")
            return run_now.step >= step

        # A Ray worker node, after the run's first checkpoint: Ray Train restarts the worker group
        # from the checkpoint.
        wait_for(lambda: training_until(CHECKPOINT_EVERY + 10), 600, "job 2's first checkpoint", 0.2)
        killed_at, step, started_before = time.monotonic(), client.get(job.id).runs[0].step, len(starts())
        restart(stack, stack.container("ray-worker", 1), f"at step {step}")
        resumed = wait_for(lambda: starts()[started_before:], 600, "the run to restart after the worker kill", 0.5)
        wait_for(lambda: training_until(resumed[-1]["step"] + 1), 600, "a step after the restart", 0.2)
        figures["recovery after killing a Ray worker"] = (
            f"{time.monotonic() - killed_at:.0f} s to the first step after the restart "
            f"(killed at step {step}, resumed from step {resumed[-1]['step']} on hosts {resumed[-1]['hosts']})"
        )
        # Spread is Ray's best effort: a restart before the node is back packs the workers.
        check(set(resumed[-1]["hosts"]) <= workers, f"resumed on {resumed[-1]['hosts']}, not the worker containers")
        print(f"training went on: {figures['recovery after killing a Ray worker']}", flush=True)

        # Redis, mid-training (checked: the run is still training): SIGTERM writes the append-only
        # file; the services and the API reconnect.
        step = client.get(job.id).runs[0].step
        wait_for(lambda: training_until(step + 1), 600, "training before the Redis restart", 0.2)
        restarted_at, step = time.monotonic(), client.get(job.id).runs[0].step
        stack.docker("restart", "-t", "10", stack.container("redis"))
        print(f"restarted {stack.container('redis')} at step {step}", flush=True)
        wait_for(lambda: client.get(job.id).runs[0].step > step, 600, "training to be seen going on", 0.2)
        figures["recovery after restarting redis"] = f"{time.monotonic() - restarted_at:.0f} s to the next step seen"
        print(f"the API answers and training goes on: {figures['recovery after restarting redis']}", flush=True)

        # The generator, mid-task: killed as soon as its log says it started job 2's task (seconds of
        # work); the killed instance's log must not say it finished. The restarted generator
        # reclaims the task after GPO_CLAIM_IDLE_S.
        generator = stack.container("generator")
        wait_for(lambda: task_log(stack, generator, job.id, "task started"), 900, "generation to start", 0.05)
        killed_at = time.monotonic()
        stack.docker("kill", generator)
        check(not task_log(stack, generator, job.id, "task done"), "the generator finished before it was killed")
        print(f"killed {generator} while generating", flush=True)
        stack.docker("start", generator)
        wait_for(lambda: client.get(job.id).runs[0].stage in ("judge", "done"), 900, "generation after the kill", 0.5)
        figures["recovery after killing the generator"] = f"{time.monotonic() - killed_at:.0f} s to judging"
        print(f"generation finished: {figures['recovery after killing the generator']}", flush=True)

        done = client.wait(job.id)
        check(done.state == "succeeded", f"job 2 ended {done.state}: {done}")
        check(done.runs[0].step == STEPS, f"job 2 trained {done.runs[0].step} steps, not {STEPS}")
        check_once_each(client, job.id, run, SAMPLES)
        check(stack.redis("xlen", "gpo:dead") == "0", "a task was dead-lettered")
        figures["job 2 wall time (with the kills)"] = f"{time.monotonic() - job_started:.0f} s"
        print(f"job 2 succeeded: {figures['job 2 wall time (with the kills)']}; nothing duplicated, "
              "nothing dead-lettered", flush=True)  # fmt: skip
    except BaseException:
        print(stack.logs()[-6000:], file=sys.stderr)
        raise
    finally:
        if not args.keep:
            stack.down()
    figures["total"] = f"{time.monotonic() - started:.0f} s"
    print("\nfigures:")
    for name, value in figures.items():
        print(f"  {name}: {value}")
    print("command: python scripts/compose_smoke.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
