"""Work queues: per stage, one Redis Stream per tenant, read through a consumer group (at-least-once)
and served round robin across tenants.

- Fairness: a worker takes its next task from the tenants' streams in turn (a shared counter says
  where each round starts), so one tenant's thousands of queued tasks delay another tenant's
  first task by about one task per worker, not by all of them.
- A task is acknowledged (and deleted) only after its work is durable.
- A busy worker heartbeats by re-claiming its own entry (XCLAIM ... JUSTID resets the idle time);
  an entry idle longer than ``claim_idle_ms`` belongs to a dead worker and is taken over by the
  next worker that asks (XAUTOCLAIM, looked for every quarter of that time).
- A failed attempt is retried after an exponential backoff (a delayed set, promoted when due, to
  the stream it came from); after ``max_attempts`` failures, or when workers keep dying on it, the
  task goes to the dead-letter stream with the reason.

Keys::

    gpo:queue:{stage}:{tenant tag}   a tenant's stream of a stage (tag: sha256 of the tenant)
    gpo:queues:{stage}               the set of a stage's streams
    gpo:delayed:{stage}              retries waiting for their backoff: {"stream", "task"} by due time
    gpo:rr:{stage}                   the round-robin counter
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

GROUP = "workers"
DEAD_LETTER = "gpo:dead"
STAGES = ("train", "generate", "judge")

# Adds a task to a tenant's stream, creating the stream and its consumer group on first use and
# registering it with the stage. KEYS: the stream, the stage's set of streams. ARGV: the task.
ENQUEUE = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], 'workers', '0', 'MKSTREAM')
redis.call('SADD', KEYS[2], KEYS[1])
return redis.call('XADD', KEYS[1], '*', 'task', ARGV[1])
"""


def tenant_tag(tenant: str) -> str:
    """A fixed-length, key-safe name for a tenant (tenant names come from the operator's key file)."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:16]


def stream_key(stage: str, tenant: str) -> str:
    return f"gpo:queue:{stage}:{tenant_tag(tenant)}"


def streams_key(stage: str) -> str:
    return f"gpo:queues:{stage}"


def task_record(job_id: str, run: str, round: int | None = None) -> dict:
    """A task as the queues carry it: the job, the run, the online round when it is one's."""
    task: dict[str, Any] = {"job": job_id, "run": run, "attempt": 1}
    if round is not None:
        task["round"] = round
    return task


def enqueue(client: redis.Redis, stage: str, tenant: str, task: dict) -> str:
    return client.eval(ENQUEUE, 2, stream_key(stage, tenant), streams_key(stage), json.dumps(task))


@dataclass
class Message:
    id: str
    stream: str  # the tenant's stream it came from (and goes back to)
    task: dict
    deliveries: int  # times this entry was handed to a worker (2+ means a worker died on it)

    @property
    def attempt(self) -> int:
        return int(self.task.get("attempt", 1))


class TaskQueue:
    def __init__(
        self,
        client: redis.Redis,
        stage: str,
        consumer: str,
        claim_idle_ms: int = 30_000,
        max_attempts: int = 3,
        backoff_s: float = 2.0,
    ):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        self.r, self.stage, self.consumer = client, stage, consumer
        self.streams_key = streams_key(stage)
        self.delayed = f"gpo:delayed:{stage}"
        self.rotation = f"gpo:rr:{stage}"
        self.claim_idle_ms, self.max_attempts, self.backoff_s = claim_idle_ms, max_attempts, backoff_s
        self._next_reclaim = 0.0

    def streams(self) -> list[str]:
        return sorted(self.r.smembers(self.streams_key))

    def put(self, tenant: str, task: dict) -> str:
        return enqueue(self.r, self.stage, tenant, task)

    def get(self, block_ms: int = 1000) -> Message | None:
        """A task abandoned by a dead worker first, else the next tenant's new task in turn
        (waiting up to ``block_ms`` for one)."""
        self.promote_due()
        streams = self.streams()
        if not streams:
            time.sleep(min(block_ms, 250) / 1000)
            return None
        message = self._reclaim(streams) or self._next_in_turn(streams)
        if message is None:  # wait for the first task on any stream
            reply = self.r.xreadgroup(GROUP, self.consumer, dict.fromkeys(streams, ">"), count=1, block=block_ms)
            message = self._first_of(reply or [])
        return message

    def _reclaim(self, streams: list[str]) -> Message | None:
        now = time.monotonic()
        if now < self._next_reclaim:
            return None
        for stream in streams:
            claimed = self.r.xautoclaim(stream, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=1)
            if claimed and claimed[1] and (message := self._first_of([(stream, claimed[1])])):
                return message  # look again at once next time: there may be more
        self._next_reclaim = now + self.claim_idle_ms / 4000
        return None

    def _next_in_turn(self, streams: list[str]) -> Message | None:
        start = self.r.incr(self.rotation) % len(streams)
        for stream in streams[start:] + streams[:start]:
            reply = self.r.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=1)
            if reply and (message := self._first_of(reply)):
                return message
        return None

    def _first_of(self, reply: list) -> Message | None:
        """The first live entry of an XREADGROUP/XAUTOCLAIM reply; any further ones (a blocking
        read that woke on two streams at once) go back to their streams."""
        found = None
        for stream, entries in reply:
            for entry_id, fields in entries:
                if fields is None:  # deleted while pending
                    self.r.xack(stream, GROUP, entry_id)
                    continue
                pending = self.r.xpending_range(stream, GROUP, entry_id, entry_id, 1)
                deliveries = pending[0]["times_delivered"] if pending else 1
                message = Message(entry_id, stream, json.loads(fields["task"]), deliveries)
                if found is None:
                    found = message
                else:
                    self.hand_back(message)
        return found

    def heartbeat(self, message: Message) -> None:
        """Reset the entry's idle time: it is still being worked on."""
        self.r.xclaim(message.stream, GROUP, self.consumer, 0, [message.id], justid=True)

    def ack(self, message: Message) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(message.stream, GROUP, message.id)
        pipe.xdel(message.stream, message.id)
        pipe.execute()

    def hand_back(self, message: Message) -> None:
        """Give the task to another worker now (this one is shutting down)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(message.stream, {"task": json.dumps(message.task)})
        pipe.xack(message.stream, GROUP, message.id)
        pipe.xdel(message.stream, message.id)
        pipe.execute()

    def retry_later(self, message: Message, reason: str) -> float:
        """Schedule the next attempt after an exponential backoff; returns the delay."""
        delay = self.backoff_s * 2 ** (message.attempt - 1)
        task = {**message.task, "attempt": message.attempt + 1, "last_error": reason[:2000]}
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(self.delayed, {json.dumps({"stream": message.stream, "task": task}): time.time() + delay})
        pipe.xack(message.stream, GROUP, message.id)
        pipe.xdel(message.stream, message.id)
        pipe.execute()
        return delay

    def dead_letter(self, message: Message, reason: str) -> None:
        entry = {
            "stage": self.stage,
            "task": json.dumps(message.task),
            "reason": reason[:4000],
            "attempts": message.attempt,
            "deliveries": message.deliveries,
            "ts": f"{time.time():.3f}",
        }
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(DEAD_LETTER, entry, maxlen=10_000)
        pipe.xack(message.stream, GROUP, message.id)
        pipe.xdel(message.stream, message.id)
        pipe.execute()

    def promote_due(self) -> None:
        """Move retries whose backoff has passed back onto their streams (ZREM decides who moves each)."""
        for payload in self.r.zrangebyscore(self.delayed, 0, time.time(), start=0, num=20):
            if self.r.zrem(self.delayed, payload):
                delayed = json.loads(payload)
                self.r.xadd(delayed["stream"], {"task": json.dumps(delayed["task"])})

    def exhausted(self, message: Message) -> bool:
        """Workers died on this task too often (a crash, not an exception, each time)."""
        return message.deliveries > self.max_attempts

    def depth(self) -> dict[str, int]:
        """Waiting, in flight and delayed tasks over every tenant (for /metrics)."""
        waiting = pending = 0
        for stream in self.streams():
            length = self.r.xlen(stream)
            try:
                in_flight = self.r.xpending(stream, GROUP)["pending"]
            except redis.ResponseError:
                in_flight = 0
            waiting, pending = waiting + length - in_flight, pending + in_flight
        return {"waiting": waiting, "in_flight": pending, "delayed": self.r.zcard(self.delayed)}

    def adopt_legacy_stream(self, tenant_of) -> int:
        """Move the tasks of the single stream earlier versions used (``gpo:queue:{stage}``) to
        their tenants' streams (``tenant_of(job_id)``; None: the job is gone, the task dropped), so
        an upgrade with work queued loses none. Returns how many were moved."""
        legacy = f"gpo:queue:{self.stage}"
        moved = 0
        for entry_id, fields in self.r.xrange(legacy) if self.r.exists(legacy) else []:
            task = json.loads(fields["task"])
            if (tenant := tenant_of(task.get("job", ""))) is not None:
                self.put(tenant, task)
                moved += 1
            self.r.xdel(legacy, entry_id)
        if moved or self.r.exists(legacy):
            self.r.delete(legacy)
        return moved
