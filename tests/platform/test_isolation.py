"""Isolation by construction (issue 27), against real service processes, a real redis-server and
the real control service over HTTP: every task runs in a child its worker supervises, which holds
none of the platform's secrets and ends when its job is cancelled or deleted, whatever it is doing;
a judge's key is the operator's for its endpoint or the tenant's stored secret, never a variable a
spec names."""

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import psutil
import pytest

from gpo_client import Client
from gpo_client.sdk import InvalidSpec
from gpo_core.sweep.views import TERMINAL
from tests.platform.conftest import TENANT_KEYS, wait_until
from tests.platform.test_reliability import Platform, small_job
from tests.support.json_server import Script, chat_completion, json_server

pytestmark = pytest.mark.slow
KEY_A, KEY_B = list(TENANT_KEYS)
REPORTED = ("succeeded", "inconclusive")  # over, with a report
WORKER_SECRETS = {
    "OPENAI_API_KEY": "sk-operator-secret-0123456789",
    "HF_TOKEN": "hf_operator_secret_0123456789",
    "GPO_METRICS_KEY": "metrics-key-of-the-operator-0123",
    "AWS_SECRET_ACCESS_KEY": "aws-operator-secret-0123456789",
}
NEVER_ENDS = "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}" \
             "{% endfor %}{% endfor %}{% endfor %}"  # fmt: skip


@pytest.fixture(scope="module")
def judge_endpoint():
    script = Script(lambda body, number: (200, {}, chat_completion(content="Verdict: A")))
    with json_server(script) as url:
        yield url, script


@pytest.fixture
def platform(tmp_path, small_task, judge_endpoint, tmp_path_factory):
    keys = ",".join(f"{key}:{tenant}" for key, tenant in TENANT_KEYS.items())
    shared = tmp_path / "shared"
    shutil.copytree(small_task.artifacts.model_dir, shared / "model")
    cache = tmp_path_factory.getbasetemp() / "isolation-cache"
    env = {"GPO_API_KEYS": keys, "GPO_CACHE_DIR": str(cache), "GPO_CLAIM_IDLE_S": "3", "GPO_HEARTBEAT_S": "0.5",
           "GPO_READ_ROOTS": str(shared), "GPO_RATE_LIMIT_PER_MINUTE": "0", "GPO_TASK_STOP_GRACE_S": "3",
           "GPO_JUDGE_ENDPOINTS": f"{judge_endpoint[0]}=OPENAI_API_KEY", **WORKER_SECRETS}  # fmt: skip
    platform = Platform(tmp_path / "stack", env)
    platform.shared = shared
    yield platform
    platform.close()


def task_children(worker) -> list[psutil.Process]:
    return psutil.Process(worker.pid).children(recursive=True)


def test_a_tasks_child_holds_none_of_the_workers_secrets(platform) -> None:
    """Finding 2's root: a task ran in the worker's process, with its environment (Redis URL and
    password, Ray token, metrics and API keys). A task's child starts from an allow-list."""
    trainer = platform.start("trainer")
    job = platform.client.submit(small_job(steps=400))
    wait_until(lambda: platform.client.get(job.id).runs[0].step > 0, 180, "training to start")
    [child] = [p for p in task_children(trainer) if "gpo_services.common.sandbox" in " ".join(p.cmdline())]
    environment = child.environ()
    secrets = [*WORKER_SECRETS.values(), platform.stack["redis_url"]]
    assert not [name for name, value in environment.items() if any(s in value for s in secrets)]
    assert "GPO_REDIS_URL" not in environment and "PATH" in environment
    assert os.getpgid(child.pid) == child.pid  # its own process group, ended as one
    platform.client.cancel(job.id)
    wait_until(lambda: not child.is_running(), 30, "the task's child to end")


def test_a_chat_template_that_never_ends_is_ended_on_cancel_and_others_go_on(platform) -> None:
    """Finding 3: three nested range(100000) loops held the trainer in preflight; cancel, the
    deadline and SIGTERM did nothing and another tenant waited minutes. The child is asked to stop,
    then ended with its group after GPO_TASK_STOP_GRACE_S (3 s here)."""
    trainer = platform.start("trainer")
    a = Client(platform.stack["server"], KEY_A)

    def turn(role: str, content: str) -> list[dict]:
        return [{"role": role, "content": content}]

    pairs = [{"prompt": turn("user", f"post {i}"), "chosen": turn("assistant", "good"),
              "rejected": turn("assistant", "bad")} for i in range(8)]  # fmt: skip
    prompts = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"post {i}"}]} for i in range(4)]
    for name, records, kind in (("pairs.jsonl", pairs, "pairs"), ("prompts.jsonl", prompts, "prompts")):
        body = "".join(json.dumps(r) + "\n" for r in records)
        response = httpx.put(f"{platform.stack['server']}/data/{name}", params={"kind": kind}, content=body,
                             headers={"Authorization": f"Bearer {KEY_A}"})  # fmt: skip
        assert response.status_code == 201, response.text
    model = str(platform.shared / "model")
    spec = {"policy": model, "dataset": "data:pairs.jsonl", "eval_prompts": "data:prompts.jsonl",
            "chat_template": NEVER_ENDS, "losses": ["logistic"], "betas": [0.1], "training": {"steps": 2},
            "judge": {"kind": "local", "model_dir": model}}  # fmt: skip
    job = a.submit(spec)
    wait_until(lambda: a.get(job.id).runs[0].state == "running", 60, "the task to start")
    time.sleep(2)  # inside the template now
    cancelled_at = time.monotonic()
    a.cancel(job.id)
    wait_until(lambda: a.get(job.id).runs[0].state == "cancelled", 20, "the run to be cancelled")
    assert time.monotonic() - cancelled_at < 3 + 10
    assert "did not stop within 3 s of being asked: ended" in trainer.log.read_text()
    b = Client(platform.stack["server"], KEY_B)
    other = b.submit(small_job(steps=2))
    wait_until(lambda: b.get(other.id).runs[0].stage in ("generate", "judge", "done"), 120,
               "another tenant's run to train")  # fmt: skip


def test_delete_after_cancel_ends_the_training_and_leaves_nothing_behind(platform) -> None:
    """Finding 4: DELETE removed the cancel flag, and the trainer trained the deleted job on, outside
    every quota, leaving an orphan folder and keys. A deleted job's child is ended at once."""
    trainer = platform.start("trainer")
    job = platform.client.submit(small_job(steps=5000))
    wait_until(lambda: platform.client.get(job.id).runs[0].step > 0, 180, "training to start")
    children = task_children(trainer)
    platform.client.cancel(job.id)
    platform.client.delete(job.id)
    wait_until(lambda: not any(c.is_running() for c in children), 15, "the task's processes to end")
    wait_until(lambda: "the job was deleted" in trainer.log.read_text(), 15, "the worker to drop the task")
    time.sleep(2)
    assert not (Path(platform.stack["artifacts"]) / job.id).exists()
    assert not [key for key in platform.redis.scan_iter(f"gpo:job:{job.id}*")]


def test_a_judge_key_is_the_operators_for_its_endpoint_or_the_tenants_own_secret(platform, judge_endpoint) -> None:
    """Finding 2: judge.api_key_env named any variable of the judge worker, whose value went to the
    endpoint. Now the spec cannot name one; the endpoint gets the operator's key for it, or the
    tenant's stored secret, which no endpoint returns."""
    url, script = judge_endpoint
    for name in ("trainer", "generator", "judge"):
        platform.start(name)
    judge = {
        "kind": "chat",
        "base_url": url,
        "model": "judge",
        "verdict": "rationale",
        "template": "summary",
        "probe": 0,
    }  # its scripted answer is the same whatever it reads: no preflight probe (it would stop the job)
    with pytest.raises(InvalidSpec) as refused:
        platform.client.submit({**small_job(steps=2), "judge": {**judge, "api_key_env": "GPO_REDIS_URL"}})
    assert any(d["field"] == "judge.api_key_env" for d in refused.value.details)

    script.authorizations.clear()
    done = platform.wait_for_job(platform.client.submit({**small_job(steps=2), "judge": judge}).id)
    # This endpoint always answers A, whichever response is A: every verdict on two different
    # responses flips with the order (after 2 steps most are the reference's own, a tie without a
    # call), so the job is over with its report but decides nothing (issue 29), and says why.
    assert done.state == "inconclusive" and (
        "position bias" in done.reason or "every comparison was a tie" in done.reason
    ), done
    assert set(script.authorizations) == {f"Bearer {WORKER_SECRETS['OPENAI_API_KEY']}"}
    assert platform.client.report_json(done.id)["inconclusive"] == done.reason

    platform.client.set_secret("my-judge", "sk-tenant-own-key-42")
    assert platform.client.secrets() == ["my-judge"]
    response = httpx.get(f"{platform.stack['server']}/secrets/my-judge", headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code in (404, 405) and "sk-tenant" not in response.text
    script.authorizations.clear()
    spec = {**small_job(steps=2), "name": "own", "judge": {**judge, "api_key_secret": "my-judge"}}
    done = platform.wait_for_job(platform.client.submit(spec).id)
    assert done.state == "inconclusive", done
    assert set(script.authorizations) == {"Bearer sk-tenant-own-key-42"}
    logs = "".join(p.read_text() for p in (platform.directory / "logs").glob("*.log"))
    assert "sk-tenant-own-key-42" not in logs and WORKER_SECRETS["OPENAI_API_KEY"] not in logs


def test_tenants_read_names_not_server_paths_and_share_no_cache(platform, judge_endpoint, tmp_path) -> None:
    """Low findings: server paths in job reasons, events, job.json, identity.json, report.json and
    metrics.jsonl; and the reference cache's hit or miss told a tenant whether anyone had trained
    on a model and dataset. What leaves the API names uploads as data:NAME (and paths relative to
    the job); each tenant's jobs share caches with each other only."""
    for name in ("trainer", "generator", "judge"):
        platform.start(name)
    pairs, prompts = tmp_path / "same.jsonl", tmp_path / "prompts.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"post {i}", "chosen": "same", "rejected": "same"}) + "\n"
                             for i in range(8)))  # fmt: skip
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"post {i}"}) + "\n" for i in range(4)))
    platform.client.upload(pairs, kind="pairs")
    platform.client.upload(prompts, kind="prompts")
    judge = {"kind": "chat", "base_url": judge_endpoint[0], "model": "judge", "verdict": "rationale"}
    spec = {"name": "mine", "policy": str(platform.shared / "model"), "dataset": "data:same.jsonl",
            "eval_prompts": "data:prompts.jsonl", "losses": ["logistic"], "betas": [0.1], "judge": judge,
            "training": {"steps": 2, "batch_size": 4}}  # fmt: skip
    failed = platform.wait_for_job(platform.client.submit(spec).id)
    artifacts = platform.stack["artifacts"]
    assert failed.state == "failed" and "data:same.jsonl" in failed.reason, failed
    assert artifacts not in failed.reason and artifacts not in (failed.runs[0].reason or "")

    # Its own response length: pairs tokenized unlike any other test's, so the module's earlier jobs
    # (for A and for B) left nothing in either tenant's cache for this key.
    job = {**small_job(steps=2), "training": {**small_job(steps=2)["training"], "max_response_length": 12}}
    first = platform.wait_for_job(platform.client.submit(job).id)
    # Two steps barely move the policy: its samples may all tie with the reference's, which makes the
    # job inconclusive (issue 29); either way its report and artifacts are written.
    assert first.state in REPORTED, first
    shown = [platform.client.artifact(first.id, path).decode() for path in
             ("job.json", "identity.json", "runs/r00-logistic-b0.1/train/metrics.jsonl",
              "runs/r00-logistic-b0.1/train.json", "report/report.json")]  # fmt: skip
    shown += [json.dumps(event.data) for event in platform.client.events(first.id)]
    leaks = [text for text in shown if artifacts in text or str(platform.env["GPO_CACHE_DIR"]) in text]
    assert not leaks, leaks[0][:500]
    assert json.loads(shown[3])["reference_cache"] == "miss"

    other = Client(platform.stack["server"], KEY_B)
    second = other.submit(job)
    wait_until(lambda: other.get(second.id).state in TERMINAL, 240, "B's job")
    assert other.get(second.id).state in REPORTED, other.get(second.id)
    trained = json.loads(other.artifact(second.id, "runs/r00-logistic-b0.1/train.json"))
    assert trained["reference_cache"] == "miss"  # tenant A's identical run is not B's cache hit
    again = platform.wait_for_job(platform.client.submit({**job, "name": "again"}).id)
    assert (
        json.loads(platform.client.artifact(again.id, "runs/r00-logistic-b0.1/train.json"))["reference_cache"] == "hit"
    )
