"""Breaking things on purpose: real service processes, a real redis-server (append-only on), the
real control service over HTTP. Workers are killed (SIGKILL, SIGTERM) mid-task, Redis restarts
mid-job, tasks fail forever; no job is lost, run twice or left without a reason."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from gpo_client import Client
from gpo_client.stack import SERVICES, start_stack, stop_stack
from gpo_core.sweep.views import TERMINAL
from tests.platform.conftest import TENANT_KEYS, wait_until
from tests.support.json_server import Script, json_server

pytestmark = pytest.mark.slow
KEY = next(iter(TENANT_KEYS))


class Platform:
    """The local stack without workers; tests start, kill and restart them one by one."""

    def __init__(self, directory: Path, env: dict):
        self.directory, self.env = directory, env
        self.stack = start_stack(directory, env=env, workers=())
        self.client = Client(self.stack["server"], KEY)
        self.processes: list[subprocess.Popen] = []
        self.redis = redis.Redis.from_url(self.stack["redis_url"], decode_responses=True)

    def start(self, name: str, **settings: str) -> subprocess.Popen:
        log = self.directory / "logs" / f"{name}-{len(self.processes)}.log"
        name_tag = f"{name}-{len(self.processes)}"
        env = {**os.environ, **self.env, "GPO_REDIS_URL": self.stack["redis_url"],
               "GPO_ARTIFACTS": self.stack["artifacts"], "GPO_WORKER_NAME": name_tag, **settings}  # fmt: skip
        with log.open("w") as handle:
            process = subprocess.Popen([sys.executable, "-m", SERVICES[name]], stdout=handle, stderr=handle, env=env,
                                       start_new_session=True)  # fmt: skip
        process.log = log
        self.processes.append(process)
        return process

    def signal(self, process: subprocess.Popen, signum: int) -> None:
        os.killpg(process.pid, signum)

    def run_dir(self, job_id: str, run: str) -> Path:
        return Path(self.stack["artifacts"]) / job_id / "runs" / run

    def wait_for_job(self, job_id: str, timeout_s: float = 240):
        wait_until(lambda: self.client.get(job_id).state in TERMINAL, timeout_s, "the job")
        return self.client.get(job_id)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.signal(process, signal.SIGKILL)
                process.wait()
        self.client.close()
        stop_stack(self.directory)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("platform-cache")  # the small task is built once for these tests


def _slow_reply(body: dict, number: int) -> tuple[int, dict, dict]:
    """A judge endpoint that answers the preflight's probe comparison at once (a tie), then takes
    60 s to answer anything else (and then fails): healthy when the job starts, slow later."""
    if "A short answer." not in body.get("prompt", ""):
        time.sleep(60)
        return 500, {}, {"error": {"message": "internal", "type": "server_error"}}
    prompt = body["prompt"]  # the template and a label: the label's log-prob is the last token's
    logprobs = {"tokens": [prompt[:-2], prompt[-2:], " "], "token_logprobs": [None, -1.0, -0.5],
                "text_offset": [0, len(prompt) - 2, len(prompt)], "top_logprobs": None}  # fmt: skip
    choice = {"index": 0, "text": " ", "logprobs": logprobs, "finish_reason": "length"}
    return (
        200,
        {},
        {"id": "probe", "object": "text_completion", "created": 0, "model": body["model"], "choices": [choice]},
    )


@pytest.fixture(scope="session")
def slow_endpoint():
    with json_server(Script(_slow_reply)) as url:
        yield url


@pytest.fixture
def platform(tmp_path, shared_cache, slow_endpoint):
    keys = ",".join(f"{key}:{tenant}" for key, tenant in TENANT_KEYS.items())
    (tmp_path / "shared").mkdir()  # the deployment's read-only root: jobs may name files in it
    env = {"GPO_API_KEYS": keys, "GPO_CACHE_DIR": str(shared_cache), "GPO_CLAIM_IDLE_S": "3",
           "GPO_HEARTBEAT_S": "0.5", "GPO_MAX_ATTEMPTS": "2", "GPO_READ_ROOTS": str(tmp_path / "shared"),
           "GPO_JUDGE_ENDPOINTS": f"http://127.0.0.1:9/v1,{slow_endpoint}",
           "GPO_RATE_LIMIT_PER_MINUTE": "0"}  # the tests poll  # fmt: skip
    platform = Platform(tmp_path / "stack", env)
    yield platform
    platform.close()


def small_job(steps: int = 30, **generation) -> dict:
    return {
        "task": {"size": "small", "seed": 3},
        "losses": ["logistic"],
        "betas": [0.1],
        "training": {"steps": steps, "batch_size": 8, "checkpoint_every": 5, "trace_every": 0},
        "generation": {"backend": "transformers", "prompts": 8, **generation},
    }


def metrics(platform: Platform, job_id: str, run: str) -> list[dict]:
    lines = (platform.run_dir(job_id, run) / "train" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def task_log(process, message: str) -> list[dict]:
    """This worker's JSON log records with ``message`` (complete lines only)."""
    lines = [line for line in process.log.read_text().splitlines() if line.startswith('{"ts"') and line.endswith("}")]
    return [r for r in map(json.loads, lines) if r["message"] == message]


def started_tasks(process) -> list[str]:
    """The runs whose tasks this worker started, from its JSON log lines."""
    return [r["run"] for r in task_log(process, "task started")]


def replace_mid_task(
    platform: Platform, worker, name: str, job_id: str, run: str, what: str, timeout_s: float = 120
) -> subprocess.Popen:
    """SIGKILL ``worker`` as soon as its log says it started a task of ``run`` (mid-task, before
    any ack) and start another ``name`` worker in its place; fails at once if the job ends first."""
    wait_until(lambda: run in started_tasks(worker) or platform.client.get(job_id).state in TERMINAL, timeout_s,
               what, interval_s=0.01)  # fmt: skip
    assert platform.client.get(job_id).state not in TERMINAL, platform.client.get(job_id)
    platform.signal(worker, signal.SIGKILL)
    return platform.start(name)


def online_job(steps_per_round: int, prompts_per_round: int = 16) -> dict:
    """The small task online: two rounds, each judged against the reference too, no offline twin."""
    spec = small_job()
    del spec["training"]["steps"]  # an online job's steps are its rounds'
    spec["online"] = {"rounds": 2, "prompts_per_round": prompts_per_round, "steps_per_round": steps_per_round,
                      "eval_prompts": 8, "offline_baseline": False}  # fmt: skip
    return spec


def test_a_killed_trainer_is_replaced_and_the_run_resumes_from_its_checkpoint(platform) -> None:
    first = platform.start("trainer")
    platform.start("generator")
    platform.start("judge")
    job = platform.client.submit(small_job(steps=300))  # long enough to be killed mid-run
    run = job.runs[0].id
    wait_until(lambda: platform.client.get(job.id).runs[0].step >= 12, 120, "training past a checkpoint")
    platform.signal(first, signal.SIGKILL)
    assert not (platform.run_dir(job.id, run) / "train.json").exists()  # killed mid-run, not after
    second = platform.start("trainer")
    done = platform.wait_for_job(job.id)
    assert done.state == "succeeded" and done.runs[0].step == 300
    records = metrics(platform, job.id, run)
    resumed = [r for r in records if r["kind"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 10 and resumed[0]["step"] % 5 == 0
    assert [r["kind"] for r in records].count("end") == 1  # trained to completion once
    assert max(r["step"] for r in records if r["kind"] == "step") == 300
    assert started_tasks(second) == [run]
    assert platform.redis.xlen("gpo:dead") == 0


def test_killed_generator_and_judge_tasks_are_redelivered_and_complete_once(platform) -> None:
    platform.start("trainer")
    generator = platform.start("generator")
    judge = platform.start("judge")
    spec = small_job(steps=4)
    spec["generation"] = {"backend": "transformers", "n": 16}  # seconds of work for each stage
    job = platform.client.submit(spec)
    run = job.runs[0].id
    second_generator = replace_mid_task(platform, generator, "generator", job.id, run, "generation to start")
    second_judge = replace_mid_task(platform, judge, "judge", job.id, run, "judging to start")
    done = platform.wait_for_job(job.id)
    assert done.state == "succeeded"
    assert run in started_tasks(second_generator) and run in started_tasks(second_judge)
    prompts = 48  # the small task's evaluation prompts
    responses = (platform.run_dir(job.id, run) / "responses.jsonl").read_text().splitlines()
    assert len(responses) == 16 * prompts
    assert len({(json.loads(r)["prompt_id"], json.loads(r)["sample"]) for r in responses}) == 16 * prompts
    judged = json.loads((platform.run_dir(job.id, run) / "judgement.json").read_text())
    assert judged["win_rate"]["comparisons"] == 16 * prompts and judged["invalid"] == 0
    assert platform.redis.xlen("gpo:dead") == 0


def test_an_online_job_rounds_go_through_the_services_and_survive_a_killed_trainer(platform) -> None:
    """Each round's sampling, labelling and training are tasks of the generator, judge and trainer;
    a trainer killed mid-round is replaced and the round resumes from its checkpoint, nothing
    sampled or judged twice."""
    first = platform.start("trainer")
    platform.start("generator")
    judge = platform.start("judge")
    # 300 steps a round (a few seconds each here): long enough for the kill to land mid-round
    job = platform.client.submit(online_job(steps_per_round=300))
    (run,) = [r.id for r in job.runs]
    assert (job.runs[0].stage, job.runs[0].round) == ("train", None)  # where every job's folder starts
    # (a round whose answers were all ties would train nothing: the job would end before step 312)
    wait_until(lambda: (now := platform.client.get(job.id)).runs[0].step >= 312 or now.state in TERMINAL, 480,
               "round 1's training past a checkpoint")  # fmt: skip
    assert platform.client.get(job.id).state not in TERMINAL
    platform.signal(first, signal.SIGKILL)
    second = platform.start("trainer")
    done = platform.wait_for_job(job.id)
    assert done.runs[0].state == "succeeded" and done.runs[0].step == 600 and done.state != "failed"
    rounds = platform.run_dir(job.id, run) / "rounds"
    records = [json.loads(line) for line in (rounds / "001" / "train" / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in records if r["kind"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 10 and resumed[0]["step"] % 5 == 0
    assert [r["kind"] for r in records].count("end") == 1
    assert started_tasks(second) == [run]
    # Round 0 and 1 each labelled once, by one judge task: the judge started three (two rounds, the
    # evaluation) and the run's files hold each round's 16 comparisons.
    assert started_tasks(judge).count(run) == 3
    for r in ("000", "001"):
        labels = json.loads((rounds / r / "labels.json").read_text())
        assert labels["prompts"] == 16 and labels["pairs"] + labels["ties"] + labels["invalid"] + labels["empty"] == 16
    assert json.loads((platform.run_dir(job.id, run) / "train.json").read_text())["final_model_dir"] == (
        "rounds/001/train/final"
    )
    assert platform.redis.xlen("gpo:dead") == 0


def test_an_online_round_survives_killed_generator_and_judge_tasks(platform) -> None:
    """Round 0's sampling and labelling tasks, each killed mid-task, are redelivered to a new
    worker and done once: every prompt sampled twice, each comparison judged once."""
    platform.start("trainer")
    generator = platform.start("generator")
    judge = platform.start("judge")
    job = platform.client.submit(online_job(steps_per_round=10, prompts_per_round=185))  # all the task's prompts
    (run,) = [r.id for r in job.runs]
    # (the job's first task builds the task: under load that takes minutes)
    second_generator = replace_mid_task(platform, generator, "generator", job.id, run, "round 0's sampling", 300)
    second_judge = replace_mid_task(platform, judge, "judge", job.id, run, "round 0's labelling")
    done = platform.wait_for_job(job.id)
    assert done.state == "succeeded" and done.runs[0].step == 20
    for killed in (generator, judge):  # killed mid-task: started round 0, never finished it
        assert [r.get("round") for r in task_log(killed, "task started")] == [0] and not task_log(killed, "task done")
    for second in (second_generator, second_judge):  # the redelivered task first, then the rest
        assert next(r.get("round") for r in task_log(second, "task started")) == 0
    assert_each_round_done_once(platform.run_dir(job.id, run), prompts=185)
    assert platform.redis.xlen("gpo:dead") == 0


def assert_each_round_done_once(run_dir: Path, prompts: int) -> None:
    """Each round's ``prompts`` sampled twice each, every comparison labelled, none judged twice."""
    for folder in sorted((run_dir / "rounds").iterdir()):
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        ids = {s["prompt_id"] for s in samples}
        assert len(ids) == prompts
        assert sorted((s["prompt_id"], s["sample"]) for s in samples) == sorted((p, k) for p in ids for k in (0, 1))
        labels = json.loads((folder / "labels.json").read_text())
        decided = labels["pairs"] + labels["ties"] + labels["invalid"] + labels["empty"]
        assert labels["prompts"] == decided == prompts
        # each round's policy judged against the reference, but round 0's, which is pi_ref itself
        assert (labels["win_rate_vs_reference"] or {}).get("prompts") == (None if folder.name == "000" else 8)
    verdicts = (run_dir.parents[1] / "verdicts.jsonl").read_text().splitlines()
    assert len({json.loads(line)["key"] for line in verdicts}) == len(verdicts)  # nothing judged twice


@contextlib.contextmanager
def restarted_redis(platform: Platform, job_id: str):
    """Stop the stack's redis-server cleanly (its append-only file written), check that the API
    answers 503 meanwhile, and start it again on the same port and data; the server is stopped
    when the ``with`` block ends."""
    pid = json.loads((platform.directory / "stack.json").read_text())["pids"]["redis"]
    port = platform.stack["redis_url"].rsplit(":", 1)[1].split("/")[0]
    os.killpg(pid, signal.SIGTERM)  # a clean shutdown writes the append-only file
    wait_until(lambda: not _answers(platform.redis), 10, "redis to stop")
    during = httpx.get(f"{platform.stack['server']}/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"})
    assert during.status_code == 503 and during.json()["error"] == "unavailable"  # not a 500
    time.sleep(3)  # services see it gone and back off
    command = ["redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", str(platform.directory / "redis"),
               "--appendonly", "yes", "--save", ""]  # fmt: skip
    restarted = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: _answers(platform.redis), 10, "redis to restart")
        yield
    finally:
        restarted.terminate()
        restarted.wait()


def test_a_redis_restart_mid_job_loses_nothing(platform) -> None:
    for name in ("trainer", "generator", "judge"):
        platform.start(name)
    spec = small_job(steps=40)
    spec["betas"] = [0.1, 1.0]
    job = platform.client.submit(spec)
    wait_until(lambda: platform.client.get(job.id).runs[0].step >= 5, 120, "training to start")
    with restarted_redis(platform, job.id):
        done = platform.wait_for_job(job.id)
        assert done.state == "succeeded" and [r.step for r in done.runs] == [40, 40]
        assert platform.redis.xlen("gpo:dead") == 0
        logs = "".join(p.log.read_text() for p in platform.processes)
        assert "redis unreachable; retrying" in logs


def test_an_online_job_survives_a_redis_restart_mid_round(platform) -> None:
    """Redis stops while round 0 trains: the round's training, round 1 and the evaluation go on
    once it is back, each round sampled and labelled by one task."""
    for name in ("trainer", "generator", "judge"):
        platform.start(name)
    job = platform.client.submit(online_job(steps_per_round=100))
    (run,) = [r.id for r in job.runs]
    wait_until(lambda: platform.client.get(job.id).runs[0].step >= 5, 240, "round 0's training to start")
    with restarted_redis(platform, job.id):
        done = platform.wait_for_job(job.id)
        assert platform.redis.xlen("gpo:dead") == 0
    assert done.state == "succeeded" and done.runs[0].step == 200
    assert_each_round_done_once(platform.run_dir(job.id, run), prompts=16)
    assert "redis unreachable; retrying" in "".join(p.log.read_text() for p in platform.processes)


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_a_task_that_always_fails_is_dead_lettered_and_the_job_fails_with_the_reason(platform) -> None:
    for name in ("trainer", "generator", "judge"):
        platform.start(name)
    spec = small_job(steps=4)
    spec["judge"] = {"kind": "endpoint", "base_url": "http://127.0.0.1:9/v1", "model": "judge"}  # nobody listens
    job = platform.client.submit(spec)
    done = platform.wait_for_job(job.id)
    assert done.state == "failed"
    message = "JudgeEndpointError: could not connect to the judge endpoint http://127.0.0.1:9/v1"
    assert message in done.reason and "after 2 attempts" in done.reason, done.reason
    # Found by the preflight, before any training (an endpoint may come back: it was retried).
    assert done.runs[0].state == "failed" and done.runs[0].stage == "train" and done.runs[0].step == 0
    [(_, entry)] = platform.redis.xrange("gpo:dead")
    assert entry["stage"] == "train" and message in entry["reason"] and entry["attempts"] == "2"


def test_cancel_reaches_a_judge_held_by_a_slow_endpoint_within_seconds(platform, slow_endpoint) -> None:
    for name in ("trainer", "generator"):
        platform.start(name)
    judge = platform.start("judge")
    spec = small_job(steps=2)
    spec["training"]["lr"] = 5e-3  # a policy that moves: its answers equal to pi_ref's would tie, never judged
    spec["judge"] = {"kind": "endpoint", "base_url": slow_endpoint, "model": "judge", "probe": 0}  # slow on purpose
    job = platform.client.submit(spec)
    wait_until(lambda: platform.client.get(job.id).runs[0].stage == "judge" and
               platform.client.get(job.id).runs[0].state == "running", 180, "judging to start")  # fmt: skip
    time.sleep(1)  # inside the 60 s call now
    cancelled_at = time.monotonic()
    platform.client.cancel(job.id)
    wait_until(lambda: "the job was cancelled" in judge.log.read_text(), 10, "the judge to stop")
    assert time.monotonic() - cancelled_at < 10
    done = platform.client.get(job.id)
    assert done.state == "cancelled" and done.runs[0].state == "cancelled"
    time.sleep(2)  # a late report of the abandoned call, had there been one
    events = [json.loads(e["data"]) for _, e in platform.redis.xrange(f"gpo:job:{job.id}:events")]
    assert "succeeded" not in [e.get("state") for e in events]
    assert platform.client.get(job.id).runs[0].state == "cancelled"


def test_a_task_past_its_deadline_is_stopped_and_its_run_fails(platform, slow_endpoint) -> None:
    for name in ("trainer", "generator"):
        platform.start(name)
    platform.start("judge", GPO_TASK_DEADLINE_S="4")
    spec = small_job(steps=2)
    spec["training"]["lr"] = 5e-3  # a policy that moves: its answers equal to pi_ref's would tie, never judged
    spec["judge"] = {"kind": "endpoint", "base_url": slow_endpoint, "model": "judge", "probe": 0}  # slow on purpose
    job = platform.client.submit(spec)
    done = platform.wait_for_job(job.id, 240)
    assert done.state == "failed" and done.runs[0].stage == "judge"
    assert "stopped at the task deadline, 4 s (GPO_TASK_DEADLINE_S)" in done.runs[0].reason


def test_cancel_and_sigterm_reach_a_task_build(platform, shared_cache) -> None:
    """A run whose built-in task is not built yet: the trainer builds it first (minutes for the
    default size). Cancel stops the build within seconds, SIGTERM too; nothing half-built is kept."""
    trainer = platform.start("trainer")
    tasks = shared_cache / "tasks"
    built = set(tasks.iterdir()) if tasks.exists() else set()
    spec = {**small_job(steps=2), "task": {"size": "small", "seed": 4242}}  # not in the cache
    job = platform.client.submit(spec)
    wait_until(lambda: platform.client.get(job.id).runs[0].state == "running", 60, "the build to start")
    cancelled_at = time.monotonic()
    platform.client.cancel(job.id)
    wait_until(lambda: platform.client.get(job.id).runs[0].state == "cancelled", 10, "the build to stop")
    assert time.monotonic() - cancelled_at < 10
    second = platform.client.submit({**spec, "name": "again"})
    wait_until(lambda: platform.client.get(second.id).runs[0].state == "running", 60, "the next build to start")
    platform.signal(trainer, signal.SIGTERM)
    assert trainer.wait(timeout=15) == 0, trainer.log.read_text()[-2000:]
    assert "task handed back" in trainer.log.read_text()
    assert set(tasks.iterdir()) == built  # neither the task nor a half-built work folder


def test_bad_data_fails_the_run_at_once_with_file_and_line(platform, small_task, tmp_path) -> None:
    platform.start("trainer")
    shared = tmp_path / "shared"  # a file on the server (not an upload, which is checked on arrival)
    pairs = shared / "pairs.jsonl"
    lines = Path(small_task.artifacts.train_pairs).read_text().splitlines()[:10]
    lines[2] = '{"prompt": "a post", "chosen": "a summary"}'
    pairs.write_text("\n".join(lines) + "\n")
    model = shutil.copytree(small_task.artifacts.model_dir, shared / "model")
    prompts = shutil.copy(small_task.artifacts.eval_prompts, shared / "prompts.jsonl")
    spec = {"policy": str(model), "dataset": str(pairs), "eval_prompts": str(prompts),
            "losses": ["logistic"], "betas": [0.1], "training": {"steps": 5, "batch_size": 4, "trace_every": 0},
            "judge": {"kind": "local", "model_dir": str(model)}}  # fmt: skip
    job = platform.client.submit(spec)
    done = platform.wait_for_job(job.id, 60)
    assert done.state == "failed" and f"{pairs}:3" in done.reason and "rejected" in done.reason, done.reason
    [(_, entry)] = platform.redis.xrange("gpo:dead")
    assert entry["attempts"] == "1"  # not retried: another attempt cannot fix the data


def test_sigterm_stops_each_service_gracefully(platform) -> None:
    trainer = platform.start("trainer")
    generator = platform.start("generator")
    judge = platform.start("judge")
    job = platform.client.submit(small_job(steps=400))
    run = job.runs[0].id
    wait_until(lambda: platform.client.get(job.id).runs[0].step >= 3, 120, "training to start")
    for process in (trainer, generator, judge):
        platform.signal(process, signal.SIGTERM)
    for process in (trainer, generator, judge):
        assert process.wait(timeout=30) == 0, process.log.read_text()[-2000:]
    assert "task handed back" in trainer.log.read_text()
    stopped_at = metrics(platform, job.id, run)[-1]
    assert stopped_at["kind"] == "end" and stopped_at["stopped"] is True
    # The handed-back task resumes at once on another trainer, from the checkpoint written on the way out.
    successor = platform.start("trainer")
    wait_until(lambda: run in started_tasks(successor), 30, "the task to be taken over")
    wait_until(lambda: any(r["kind"] == "resumed" for r in metrics(platform, job.id, run)), 60, "the run to resume")
    resumed = next(r for r in metrics(platform, job.id, run) if r["kind"] == "resumed")
    assert resumed["step"] == stopped_at["step"]
    platform.client.cancel(job.id)
    control = json.loads((platform.directory / "stack.json").read_text())["pids"]["control"]
    os.killpg(control, signal.SIGTERM)
    wait_until(lambda: _gone(control), 15, "the control service to exit")


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_keys_are_never_written_to_the_logs(platform) -> None:
    for name in ("trainer", "generator", "judge"):
        platform.start(name)
    httpx.get(platform.stack["server"] + "/jobs", headers={"Authorization": "Bearer not-a-key-0123456789"})
    job = platform.client.submit(small_job(steps=4))
    platform.wait_for_job(job.id)
    logs = "".join(path.read_text() for path in (platform.directory / "logs").iterdir())
    for key in TENANT_KEYS:
        assert key not in logs
    assert "not-a-key-0123456789" not in logs


def test_a_thousand_retried_submissions_create_exactly_a_thousand_jobs(api) -> None:
    spec = {"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1]}
    headers = {"Authorization": f"Bearer {KEY}"}
    local = threading.local()

    def submit(number: int) -> tuple[str, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=api, headers=headers, timeout=30)
        response = local.client.post("/jobs", json=spec, headers={"Idempotency-Key": f"submission-{number}"})
        return response.json()["id"], response.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(submit, [n for n in range(1000) for _ in range(2)]))  # every one sent twice
    ids = [job_id for job_id, _ in answers]
    assert len(set(ids)) == 1000 and all(ids[2 * k] == ids[2 * k + 1] for k in range(1000))
    assert sorted(status for _, status in answers).count(201) == 1000
    with Client(api, KEY) as client:
        page, total = client.list(limit=100), 0
        while True:
            total += len(page.jobs)
            if page.next_offset is None:
                break
            page = client.list(offset=page.next_offset, limit=100)
    assert total == 1000
