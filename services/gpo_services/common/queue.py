"""Work queues: one Redis Stream per stage, read through a consumer group (at-least-once).

- A task is acknowledged (and deleted) only after its work is durable.
- A busy worker heartbeats by re-claiming its own entry (XCLAIM ... JUSTID resets the idle time);
  an entry idle longer than ``claim_idle_ms`` belongs to a dead worker and is taken over by the
  next worker that asks (XAUTOCLAIM).
- A failed attempt is retried after an exponential backoff (a delayed set, promoted when due);
  after ``max_attempts`` failures, or when workers keep dying on it, the task goes to the
  dead-letter stream with the reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

GROUP = "workers"
DEAD_LETTER = "gpo:dead"
STAGES = ("train", "generate", "judge")


def stream_key(stage: str) -> str:
    return f"gpo:queue:{stage}"


def enqueue(client: redis.Redis, stage: str, task: dict) -> str:
    return client.xadd(stream_key(stage), {"task": json.dumps(task)})


@dataclass
class Message:
    id: str
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
        self.stream = stream_key(stage)
        self.delayed = f"gpo:delayed:{stage}"
        self.claim_idle_ms, self.max_attempts, self.backoff_s = claim_idle_ms, max_attempts, backoff_s

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def put(self, task: dict) -> str:
        return enqueue(self.r, self.stage, task)

    def get(self, block_ms: int = 1000) -> Message | None:
        """A task abandoned by a dead worker first, else a new one (waiting up to ``block_ms``)."""
        self.promote_due()
        claimed = self.r.xautoclaim(self.stream, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=1)
        entries = claimed[1] if claimed else []
        if not entries:
            reply = self.r.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=1, block=block_ms)
            entries = reply[0][1] if reply else []
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                self.r.xack(self.stream, GROUP, entry_id)
                continue
            pending = self.r.xpending_range(self.stream, GROUP, entry_id, entry_id, 1)
            deliveries = pending[0]["times_delivered"] if pending else 1
            return Message(entry_id, json.loads(fields["task"]), deliveries)
        return None

    def heartbeat(self, message: Message) -> None:
        """Reset the entry's idle time: it is still being worked on."""
        self.r.xclaim(self.stream, GROUP, self.consumer, 0, [message.id], justid=True)

    def ack(self, message: Message) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(self.stream, GROUP, message.id)
        pipe.xdel(self.stream, message.id)
        pipe.execute()

    def hand_back(self, message: Message) -> None:
        """Give the task to another worker now (this one is shutting down)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(self.stream, {"task": json.dumps(message.task)})
        pipe.xack(self.stream, GROUP, message.id)
        pipe.xdel(self.stream, message.id)
        pipe.execute()

    def retry_later(self, message: Message, reason: str) -> float:
        """Schedule the next attempt after an exponential backoff; returns the delay."""
        delay = self.backoff_s * 2 ** (message.attempt - 1)
        task = {**message.task, "attempt": message.attempt + 1, "last_error": reason[:2000]}
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(self.delayed, {json.dumps(task): time.time() + delay})
        pipe.xack(self.stream, GROUP, message.id)
        pipe.xdel(self.stream, message.id)
        pipe.execute()
        return delay

    def dead_letter(self, message: Message, reason: str) -> None:
        entry = {"stage": self.stage, "task": json.dumps(message.task), "reason": reason[:4000],
                 "attempts": message.attempt, "deliveries": message.deliveries, "ts": f"{time.time():.3f}"}  # fmt: skip
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(DEAD_LETTER, entry, maxlen=10_000)
        pipe.xack(self.stream, GROUP, message.id)
        pipe.xdel(self.stream, message.id)
        pipe.execute()

    def promote_due(self) -> None:
        """Move retries whose backoff has passed onto the stream (ZREM decides who moves each)."""
        for payload in self.r.zrangebyscore(self.delayed, 0, time.time(), start=0, num=20):
            if self.r.zrem(self.delayed, payload):
                self.r.xadd(self.stream, {"task": payload})

    def exhausted(self, message: Message) -> bool:
        """Workers died on this task too often (a crash, not an exception, each time)."""
        return message.deliveries > self.max_attempts

    def depth(self) -> dict[str, int]:
        """Waiting, in flight and delayed tasks (for /metrics)."""
        waiting = self.r.xlen(self.stream) if self.r.exists(self.stream) else 0
        try:
            pending = self.r.xpending(self.stream, GROUP)["pending"]
        except redis.ResponseError:
            pending = 0
        return {"waiting": waiting - pending, "in_flight": pending, "delayed": self.r.zcard(self.delayed)}
