"""The job store and the task queues against a real redis-server."""

import asyncio
import json
import threading
import time

import pytest
import redis
import redis.asyncio

from gpo_core.sweep.spec import JobSpec
from gpo_services.common.queue import DEAD_LETTER, TaskQueue, stream_key
from gpo_services.common.store import AsyncJobStore, Conflict, JobStore, QuotaExceeded


def spec(**overrides) -> JobSpec:
    return JobSpec(task={"size": "small"}, losses=["logistic", "hinge"], betas=[0.1], **overrides)


def create_job(client: redis.Redis, tenant: str, job: JobSpec, idempotency_key: str | None = None) -> tuple[str, bool]:
    """Submit through the control service's store (asyncio Redis, as in the service); (id, created)."""

    kwargs = client.get_connection_kwargs()
    url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"

    async def submit():
        async_client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            view, created = await AsyncJobStore(async_client).create_job(tenant, job, idempotency_key)
        finally:
            await async_client.aclose()
        return view.id, created

    return asyncio.run(submit())


def test_a_job_and_its_runs_are_stored_and_listed_per_tenant(redis_client) -> None:
    store = JobStore(redis_client)
    job_id, created = create_job(redis_client, "a", spec())
    assert created
    job = store.get(job_id, "a")
    assert job.state == "queued" and [r.id for r in job.runs] == ["r00-logistic-b0.1", "r01-hinge-b0.1"]
    assert all(r.state == "queued" and r.stage == "train" and r.steps == 200 for r in job.runs)
    assert store.get(job_id, "b") is None
    for _ in range(4):
        create_job(redis_client, "a", spec())
    first = store.list("a", limit=3)
    second = store.list("a", offset=first.next_offset, limit=3)
    assert len(first.jobs) == 3 and len(second.jobs) == 2 and second.next_offset is None
    assert len({j.id for j in first.jobs + second.jobs}) == 5
    assert store.list("b").jobs == []


def test_job_state_is_derived_from_runs_and_every_transition_is_an_event(redis_client) -> None:
    store = JobStore(redis_client)
    job_id, _ = create_job(redis_client, "a", spec())
    assert store.transition(job_id, "r00-logistic-b0.1", state="running", stage="train") == "running"
    store.progress(job_id, "r00-logistic-b0.1", {"kind": "step", "step": 3, "steps": 200, "loss": 0.6})
    assert store.get(job_id).runs[0].step == 3
    for run in ("r00-logistic-b0.1", "r01-hinge-b0.1"):
        store.transition(job_id, run, state="succeeded", stage="done", win_rate=json.dumps({"rate": 0.6}))
    assert store.state(job_id) == "running"  # judged, but no report yet
    assert store.transition(job_id, job_fields={"report": "report/report.html"}) == "succeeded"
    events = store.events(job_id)
    kinds = [kind for _, kind, _, _ in events]
    assert kinds.count("job_state") == 3 and kinds.count("run_state") == 3 and kinds.count("metrics") == 1
    assert [d["state"] for _, k, d, _ in events if k == "job_state"] == ["queued", "running", "succeeded"]
    assert all(ts > 0 for *_, ts in events)
    with pytest.raises(Conflict, match="already succeeded"):
        store.request_cancel(job_id)


def test_a_failed_run_fails_the_job_with_its_reason_and_cancel_wins_over_running(redis_client) -> None:
    store = JobStore(redis_client)
    job_id, _ = create_job(redis_client, "a", spec())
    store.transition(job_id, "r01-hinge-b0.1", state="failed", stage="train", reason="non-finite loss at step 7")
    job = store.get(job_id)
    assert job.state == "failed" and "r01-hinge-b0.1" in job.reason and "non-finite loss at step 7" in job.reason
    # A terminal job stays terminal whatever late workers report.
    store.transition(job_id, "r00-logistic-b0.1", state="running", stage="train")
    assert store.state(job_id) == "failed"
    other, _ = create_job(redis_client, "a", spec())
    store.transition(other, "r00-logistic-b0.1", state="running", stage="train")
    assert store.request_cancel(other) == "cancelled" and store.cancel_requested(other)


def test_a_cancelled_job_never_shows_a_run_succeeded_afterwards(redis_client) -> None:
    """A worker that finishes a task after the cancel (a judge that was mid-call) reports success:
    the store records the run cancelled, atomically with the flag it checks."""
    store = JobStore(redis_client)
    job_id, _ = create_job(redis_client, "a", spec())
    store.transition(job_id, "r00-logistic-b0.1", state="running", stage="judge")
    store.request_cancel(job_id)
    for state, stage in (("succeeded", "done"), ("queued", "judge"), ("running", "generate")):
        store.transition(job_id, "r00-logistic-b0.1", state=state, stage=stage)
        assert store.get(job_id).runs[0].state == "cancelled"
    store.transition(job_id, "r01-hinge-b0.1", state="failed", reason="a real failure is kept")
    job = store.get(job_id)
    assert job.state == "cancelled" and job.runs[1].state == "failed"
    runs = [d for _, kind, d, _ in store.events(job_id) if kind == "run_state"]
    assert all(d["state"] != "succeeded" for d in runs)


def test_concurrent_transitions_never_leave_a_stale_job_state(redis_client) -> None:
    store = JobStore(redis_client)
    runs = [{"loss": "logistic", "beta": 0.1 * (k + 1)} for k in range(8)]
    job_id, _ = create_job(redis_client, "a", JobSpec(task={"size": "small"}, runs=runs))
    ids = store.run_ids(job_id)
    threads = [
        threading.Thread(target=store.transition, args=(job_id, run), kwargs={"state": "succeeded", "stage": "done"})
        for run in ids
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.state == "succeeded" for r in store.get(job_id).runs)
    assert store.transition(job_id, job_fields={"report": "r"}) == "succeeded"


def test_idempotency_key_returns_the_first_job_and_refuses_another_spec(redis_client) -> None:
    first, created = create_job(redis_client, "a", spec(), "key-1")
    again, created_again = create_job(redis_client, "a", spec(), "key-1")
    assert created and not created_again and again == first
    other_tenant, created_other = create_job(redis_client, "b", spec(), "key-1")
    assert created_other and other_tenant != first
    with pytest.raises(Conflict, match="different spec"):
        create_job(redis_client, "a", spec(name="other"), "key-1")
    # A reused key writes nothing; each key's record names a job stored in the same step.
    assert redis_client.xlen(stream_key("train", "a")) == redis_client.xlen(stream_key("train", "b")) == 2
    assert redis_client.zcard("gpo:tenant:a:jobs") == 1
    for record in redis_client.scan_iter("gpo:idem:*"):
        assert redis_client.exists(f"gpo:job:{redis_client.get(record).split()[0]}")
        assert 0 < redis_client.ttl(record) <= 24 * 3600


def test_queue_delivers_acknowledges_and_reclaims_from_a_dead_consumer(redis_client) -> None:
    dead = TaskQueue(redis_client, "train", "worker-1", claim_idle_ms=200)
    dead.put("a", {"job": "j", "run": "r", "attempt": 1})
    taken = dead.get(block_ms=100)
    assert taken.task == {"job": "j", "run": "r", "attempt": 1} and taken.deliveries == 1
    # worker-1 dies without acknowledging; worker-2 finds nothing until the entry goes idle...
    alive = TaskQueue(redis_client, "train", "worker-2", claim_idle_ms=200)
    assert alive.get(block_ms=50) is None
    time.sleep(0.25)
    reclaimed = alive.get(block_ms=50)
    assert reclaimed.id == taken.id and reclaimed.deliveries == 2
    # ...while a heartbeat keeps a busy worker's entry its own.
    alive.heartbeat(reclaimed)
    assert dead.get(block_ms=50) is None
    alive.ack(reclaimed)
    time.sleep(0.25)
    assert dead.get(block_ms=50) is None and alive.depth() == {"waiting": 0, "in_flight": 0, "delayed": 0}


def test_failed_attempts_back_off_then_dead_letter_with_the_reason(redis_client) -> None:
    queue = TaskQueue(redis_client, "judge", "w", claim_idle_ms=60_000, max_attempts=2, backoff_s=0.1)
    queue.put("a", {"job": "j", "run": "r", "attempt": 1})
    first = queue.get(block_ms=50)
    assert queue.retry_later(first, "boom") == pytest.approx(0.1)
    assert queue.get(block_ms=10) is None and queue.depth()["delayed"] == 1  # not before the backoff
    time.sleep(0.15)
    second = queue.get(block_ms=50)
    assert second.attempt == 2 and second.task["last_error"] == "boom"
    queue.dead_letter(second, "boom again")
    [(_, entry)] = redis_client.xrange(DEAD_LETTER)
    assert entry["stage"] == "judge" and entry["reason"] == "boom again" and json.loads(entry["task"])["run"] == "r"
    assert queue.depth() == {"waiting": 0, "in_flight": 0, "delayed": 0}


def test_a_task_that_kills_its_workers_is_exhausted(redis_client) -> None:
    queue = TaskQueue(redis_client, "generate", "w", claim_idle_ms=1, max_attempts=2)
    queue.put("a", {"job": "j", "run": "r"})
    deliveries = []
    for _ in range(3):
        time.sleep(0.01)
        message = queue.get(block_ms=50)
        deliveries.append(message.deliveries)
    assert deliveries == [1, 2, 3] and queue.exhausted(message)


def test_tenants_are_served_in_turn_not_first_come_first_served(redis_client) -> None:
    """One tenant queues 50 tasks, then two others queue theirs: the next worker takes the others'
    first tasks at once (round robin over the tenants' streams), not after the 50."""
    queue = TaskQueue(redis_client, "train", "w")
    for i in range(50):
        queue.put("greedy", {"job": "g", "run": f"g{i}"})
    queue.put("patient", {"job": "p", "run": "p0"})
    queue.put("patient", {"job": "p", "run": "p1"})
    queue.put("third", {"job": "t", "run": "t0"})
    served = []
    for _ in range(9):
        message = queue.get(block_ms=50)
        served.append(message.task["run"])
        queue.ack(message)
    assert {"p0", "t0"} <= set(served[:3])  # each tenant's first task within the first round
    assert served.index("p1") < 6 and served.count("p0") == 1
    assert [run for run in served if run.startswith("g")] == [f"g{i}" for i in range(6)]  # in order, per tenant
    assert queue.depth() == {"waiting": 44, "in_flight": 0, "delayed": 0}


def test_a_blocked_worker_wakes_for_a_task_on_any_tenants_stream(redis_client) -> None:
    """A waiting worker blocks on every stream it knows and wakes as soon as one gets a task; a
    tenant's very first stream is seen at the worker's next round (within ``block_ms``)."""
    queue = TaskQueue(redis_client, "generate", "w")
    other = TaskQueue(redis_client, "generate", "other")
    for tenant in ("a", "b"):
        queue.put(tenant, {"job": tenant, "run": "first"})
        queue.ack(queue.get(block_ms=50))
    threading.Timer(0.2, lambda: other.put("b", {"job": "b", "run": "x"})).start()
    started = time.monotonic()
    message = queue.get(block_ms=3000)
    assert message is not None and message.task["run"] == "x" and time.monotonic() - started < 1.5
    assert message.stream == stream_key("generate", "b")
    queue.ack(message)
    other.put("new tenant", {"job": "c", "run": "y"})
    assert queue.get(block_ms=100).task["run"] == "y"


def test_tasks_queued_by_an_earlier_version_move_to_their_tenants_streams(redis_client) -> None:
    store = JobStore(redis_client)
    job_id, _ = create_job(redis_client, "a", spec())
    legacy = "gpo:queue:judge"
    redis_client.xadd(legacy, {"task": json.dumps({"job": job_id, "run": "r00-logistic-b0.1", "attempt": 1})})
    redis_client.xadd(legacy, {"task": json.dumps({"job": "gone", "run": "r", "attempt": 1})})
    queue = TaskQueue(redis_client, "judge", "w")
    assert queue.adopt_legacy_stream(store.tenant) == 1 and not redis_client.exists(legacy)
    message = queue.get(block_ms=50)
    assert message.task["job"] == job_id and message.stream == stream_key("judge", "a")


def test_a_tenant_over_its_run_quota_is_refused_and_finished_jobs_free_it(redis_client) -> None:
    store = JobStore(redis_client)

    def submit(tenant: str) -> str:
        kwargs = redis_client.get_connection_kwargs()
        url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"

        async def go():
            client = redis.asyncio.Redis.from_url(url, decode_responses=True)
            try:
                return (await AsyncJobStore(client).create_job(tenant, spec(), max_active_runs=5))[0].id
            finally:
                await client.aclose()

        return asyncio.run(go())

    first, second = submit("a"), submit("a")  # 2 runs each: 4 of 5
    with pytest.raises(QuotaExceeded, match="you have 4 runs queued or running; at most 5"):
        submit("a")
    assert redis_client.zcard("gpo:tenant:a:jobs") == 2  # nothing of the refused job was written
    assert submit("b")  # another tenant has its own quota
    store.request_cancel(first)  # over: its runs stop counting
    assert submit("a")
    for run in store.run_ids(second):
        store.transition(second, run, state="failed", reason="x")
    assert submit("a")
