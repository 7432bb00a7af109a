"""The loop every worker service runs: take a task from its stage's stream, run the handler with a
heartbeat, then acknowledge, retry later, dead-letter or hand back; reconnect to Redis with
backoff; stop gracefully on SIGTERM; signal liveness.

A handler keeps the books (Redis: the run's state, events, the next task) and runs the work itself,
everything that reads tenant content, in a child process through ``context.run_task``
(:mod:`gpo_services.common.sandbox`): scrubbed environment, its own limits, ended whatever it is
doing. Every task can be stopped part-way: the child is asked first (its long loops check
``should_stop``: task builds, training steps, sampling batches, comparisons), then ended. The run is
then cancelled (the job was), dropped (the job was deleted: its folder goes too), fails (the task
ran past ``GPO_TASK_DEADLINE_S``) or the task goes back to the queue (this worker is stopping; a
training run has checkpointed)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from gpo_core.errors import PermanentError
from gpo_core.stopping import Stopped
from gpo_core.sweep.pipeline import DONE, Outcome, RunStage, next_step
from gpo_core.sweep.spec import JobSpec
from gpo_core.sweep.views import TERMINAL
from gpo_services.common.connection import connect
from gpo_services.common.logs import log, service_logger
from gpo_services.common.queue import Message, TaskQueue, enqueue, task_record
from gpo_services.common.sandbox import Sandbox, TaskFailed
from gpo_services.common.settings import Settings
from gpo_services.common.store import JobStore

# The job's finishing step (gpo_core.sweep.pipeline.FINISH: the pairwise comparisons, the judge's
# own accuracy, the report) travels on the judge's queue as a task of this run id.
FINALIZE = "*finalize*"
FINALIZE_TTL_S = 7 * 24 * 3600


@dataclass
class TaskContext:
    store: JobStore
    settings: Settings
    client: redis.Redis
    stopping: Callable[[], bool]
    logger: logging.Logger
    sandbox: Sandbox
    should_stop: StopWatch | None = None  # this task's: see StopWatch

    def job_dir(self, job_id: str) -> Path:
        return self.settings.artifacts / job_id

    def run_task(self, target: str, payload: dict, job_id: str, run: str | None = None) -> Any:
        """``target`` (``"module:function"``) on ``payload`` in this worker's task child: progress
        records become the run's events, log lines the job's; its result is returned (see
        :meth:`Sandbox.run` for what it raises)."""
        watch = self.should_stop
        assert watch is not None
        progress = ProgressSink(self, job_id, run) if run is not None else None

        def relay(event: dict) -> None:
            with contextlib.suppress(redis.RedisError):  # best effort: the run's files have everything
                if "progress" in event and progress is not None:
                    progress.emit(event["progress"])
                elif "log" in event:
                    self.store.log(job_id, str(event["log"]))

        return self.sandbox.run(target, payload, watch, relay, stop_now=lambda: watch.reason == "deleted")

    def enqueue(self, stage: str, job_id: str, run: str, round: int | None = None) -> None:
        """The job's next task, on its tenant's stream of ``stage`` (of an online ``round``, or of
        the run's own lifecycle: None); none if the job was deleted."""
        tenant = self.store.tenant(job_id)
        if tenant is not None:
            enqueue(self.client, stage, tenant, task_record(job_id, run, round))

    def start_stage(self, task: dict, stage: str) -> tuple[JobSpec, dict] | None:
        """The run of ``task`` marked running at ``stage``: the job's spec, and the payload its task
        child gets (the spec, the job's folder, the run, its tenant's cache); None when the job is
        over (the run is then cancelled)."""
        job_id, run = task["job"], task["run"]
        if self.skip_if_over(job_id, run):
            return None
        spec = self.store.spec(job_id)
        round = task.get("round")
        self.store.transition(job_id, run, state="running", stage=stage, round="" if round is None else round)
        cache = self.settings.tenant_cache(self.store.tenant(job_id) or "")
        return spec, {
            "spec": spec.model_dump_json(),
            "job_dir": str(self.job_dir(job_id)),
            "run": run,
            "round": round,
            "cache_dir": str(cache),
        }

    def advance(
        self, job_id: str, run: str, stage: RunStage, outcome: Outcome, round: int | None = None, **fields: Any
    ) -> None:
        """``stage`` of ``run`` (of its online ``round``, or of its own lifecycle: None) ended with
        ``outcome``: the run moves on as its lifecycle says (:func:`gpo_core.sweep.pipeline.next_step`),
        with ``fields`` recorded: its next stage queued, or the run over, and then, once every run
        is, the job's finishing step."""
        spec = self.store.spec(job_id)
        step = next_step(stage, outcome, round, spec.rounds(spec.run(run)))
        where = "" if step.round is None else step.round
        self.store.transition(job_id, run, state=step.state, stage=step.stage, round=where, **fields)
        if step.stage != "done":
            self.enqueue(step.stage, job_id, run, step.round)
            return
        job = self.store.get(job_id)
        if job is None or not all(run.state in DONE for run in job.runs):
            return
        # Exactly one finishing task per job, whichever worker saw the last run end.
        if self.client.set(f"gpo:job:{job_id}:finalize", "1", nx=True, ex=FINALIZE_TTL_S):
            self.enqueue("judge", job_id, FINALIZE)

    def skip_if_over(self, job_id: str, run: str) -> bool:
        """True (and the run marked cancelled) when the job was cancelled or has already failed."""
        if self.store.state(job_id) not in TERMINAL and not self.store.cancel_requested(job_id):
            return False
        if run != FINALIZE:
            self.store.transition(job_id, run, state="cancelled")
        return True


Handler = Callable[[dict, TaskContext], None]


class Worker:
    def __init__(
        self, stage: str, service: str, handler: Handler, settings: Settings | None = None, keep_child: bool = False
    ):
        """``keep_child``: one task child serves task after task (the generator's warm engine lives
        there); it is started again after a task that had to be stopped."""
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # progress goes to the job's events, not the log
        self.settings = settings or Settings.from_env()
        self.logger = service_logger(service)
        self.client = connect(self.settings)
        self.store = JobStore(self.client)
        self.queue = TaskQueue(
            self.client,
            stage,
            self.settings.worker_name,
            claim_idle_ms=int(self.settings.claim_idle_s * 1000),
            max_attempts=self.settings.max_attempts,
        )
        self.handler, self.service = handler, service
        self.stop_event = threading.Event()
        self.sandbox = Sandbox(
            self.settings.task_limits(), keep_child, lambda line: log(self.logger, logging.WARNING, line)
        )

    def request_stop(self, signum=None, frame=None) -> None:
        if not self.stop_event.is_set():
            log(self.logger, logging.INFO, "stopping", signal=signum)
        self.stop_event.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log(self.logger, logging.INFO, "started", stage=self.queue.stage, consumer=self.queue.consumer)
        backoff = 0.5
        ready = False
        while not self.stop_event.is_set():
            try:
                if not ready:
                    if moved := self.queue.adopt_legacy_stream(self.store.tenant):
                        log(self.logger, logging.INFO, "queued tasks moved to per-tenant streams", tasks=moved)
                    ready = True
                self._alive()
                message = self.queue.get(block_ms=1000)
                backoff = 0.5
                if message is not None:
                    self._process(message)
            except (redis.ConnectionError, redis.TimeoutError) as err:
                log(self.logger, logging.WARNING, "redis unreachable; retrying", error=str(err), retry_in_s=backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self.sandbox.close()
        log(self.logger, logging.INFO, "stopped")

    def _alive(self) -> None:
        self.client.set(f"gpo:alive:{self.queue.stage}:{self.queue.consumer}", f"{time.time():.0f}", ex=60)
        if self.settings.liveness_file:
            self.settings.liveness_file.touch()

    def _fail(self, message: Message, reason: str) -> None:
        self.queue.dead_letter(message, reason)
        job_id, run = message.task["job"], message.task.get("run")
        if not self.store.exists(job_id):
            return
        if run == FINALIZE:
            self.store.transition(job_id, job_fields={"state": "failed", "reason": f"report: {reason}"})
        else:
            self.store.transition(job_id, run, state="failed", reason=reason)

    def _process(self, message: Message) -> None:
        fields = {"job": message.task.get("job"), "run": message.task.get("run"), "attempt": message.attempt}
        if message.task.get("round") is not None:  # an online run's round (gpo_core.sweep.online)
            fields["round"] = message.task["round"]
        if not self.store.exists(message.task.get("job", "")):
            log(self.logger, logging.WARNING, "task for an unknown job; dropped", **fields)
            self.queue.ack(message)
            return
        if self.queue.exhausted(message):
            reason = f"workers stopped {message.deliveries - 1} times while running this task"
            log(self.logger, logging.ERROR, "dead-lettered", reason=reason, **fields)
            self._fail(message, reason)
            return
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(message, done), daemon=True)
        beat.start()
        context = TaskContext(self.store, self.settings, self.client, self.stop_event.is_set, self.logger, self.sandbox)
        context.should_stop = StopWatch(context, message.task["job"], self.settings.task_deadline_s)
        started = time.perf_counter()
        try:
            log(self.logger, logging.INFO, "task started", **fields)
            self.handler(message.task, context)
        except Stopped:
            self._stopped(message, context.should_stop, fields)
        except TaskFailed as err:
            if err.permanent:
                log(self.logger, logging.ERROR, "task failed (not retried)", error=str(err), **fields)
                self._fail(message, str(err))
            else:
                self._retry_or_fail(message, str(err), fields)
        except PermanentError as err:
            log(self.logger, logging.ERROR, "task failed (not retried)", error=str(err), **fields)
            self._fail(message, str(err))
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # not the task's fault: the loop reconnects and the task is redelivered
        except Exception as err:
            self._retry_or_fail(message, f"{type(err).__name__}: {err}", fields)
        else:
            self.queue.ack(message)
            log(self.logger, logging.INFO, "task done", seconds=round(time.perf_counter() - started, 2), **fields)
        finally:
            done.set()
            beat.join()

    def _retry_or_fail(self, message: Message, reason: str, fields: dict) -> None:
        if message.attempt < self.settings.max_attempts:
            delay = self.queue.retry_later(message, reason)
            log(self.logger, logging.WARNING, "task failed; retrying", error=reason, retry_in_s=delay, **fields)
            self.store.log(message.task["job"], f"{message.task.get('run')}: {reason}; retrying in {delay:.0f} s")
        else:
            log(self.logger, logging.ERROR, "task failed; dead-lettered", error=reason, **fields)
            self._fail(message, f"{reason} (after {message.attempt} attempts)")

    def _stopped(self, message: Message, watch: StopWatch, fields: dict) -> None:
        if watch.reason == "deleted":
            self.queue.ack(message)
            job_dir = self.settings.artifacts / message.task["job"]
            shutil.rmtree(job_dir, ignore_errors=True)  # what the task wrote before it was ended
            self.store.purge(message.task["job"])  # and what its last events wrote
            log(self.logger, logging.INFO, "task ended: the job was deleted", **fields)
        elif watch.reason == "deadline":
            reason = f"stopped at the task deadline, {self.settings.task_deadline_s:g} s (GPO_TASK_DEADLINE_S)"
            log(self.logger, logging.ERROR, "task past its deadline", **fields)
            self._fail(message, reason)
        elif watch.reason == "cancelled":
            self.queue.ack(message)
            if message.task.get("run") != FINALIZE:
                self.store.transition(message.task["job"], message.task["run"], state="cancelled")
            log(self.logger, logging.INFO, "task stopped: the job was cancelled", **fields)
        else:  # this worker is stopping: another one takes the task (training resumes from its checkpoint)
            self.queue.hand_back(message)
            log(self.logger, logging.INFO, "task handed back", **fields)

    def _heartbeat(self, message: Message, done: threading.Event) -> None:
        while not done.wait(self.settings.heartbeat_s):
            try:
                self.queue.heartbeat(message)
                self._alive()
            except redis.RedisError as err:
                log(self.logger, logging.WARNING, "heartbeat failed", error=str(err))


class StopWatch:
    """``should_stop`` for one task: true once the worker is stopping, the job was cancelled (Redis
    asked at most once a second, so loops may call it at every step) or the task has run for
    ``deadline_s``, or the job was deleted; ``reason`` says which ("stopping", "cancelled", "deadline"
    or "deleted")."""

    def __init__(self, context: TaskContext, job_id: str, deadline_s: float, interval_s: float = 1.0):
        self.context, self.job_id, self.interval_s = context, job_id, interval_s
        self.deadline = time.monotonic() + deadline_s
        self.reason: str | None = None
        self._checked = 0.0

    def __call__(self) -> bool:
        if self.reason is None:
            now = time.monotonic()
            if self.context.stopping():
                self.reason = "stopping"
            elif now >= self.deadline:
                self.reason = "deadline"
            elif now - self._checked >= self.interval_s:
                self._checked = now
                with contextlib.suppress(redis.RedisError):  # Redis away for a moment: ask again later
                    if not self.context.store.exists(self.job_id):
                        self.reason = "deleted"
                    elif self.context.store.cancel_requested(self.job_id):
                        self.reason = "cancelled"
        return self.reason is not None


class ProgressSink:
    """Training records to the job's event stream: step records at most twice a second, every
    trace, start, resume and end record."""

    def __init__(self, context: TaskContext, job_id: str, run: str, min_interval_s: float = 0.5):
        self.context, self.job_id, self.run, self.min_interval_s = context, job_id, run, min_interval_s
        self._last = 0.0

    def emit(self, record: dict) -> None:
        now = time.monotonic()
        last_step = record.get("kind") == "step" and record.get("step") == record.get("steps")
        if record.get("kind") == "step" and not last_step and now - self._last < self.min_interval_s:
            return
        self._last = now
        with contextlib.suppress(redis.RedisError):  # best effort: the metrics file has every record
            self.context.store.progress(self.job_id, self.run, record)

    def close(self) -> None:
        pass
