"""The judging stage: side-by-side comparisons of two response sets on the same prompts.

Every pair is judged in both orders. A verdict that flips with the order (A first -> A, B first
-> B) is a position effect, not a preference: it counts as a tie, and the flip rate is reported.
Unusable judge output is retried, then recorded as invalid and counted, never dropped silently.
Verdicts are cached by (judge settings, prompt, first response, second response).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from gpo_core.conversation import Prompt
from gpo_core.errors import GPOError
from gpo_core.stats import WinRate, length_controlled_win_rate, win_rate
from gpo_core.stopping import StopCheck, check

OrderVerdict = Literal["first", "second", "tie"]


class JudgeOutputError(GPOError, ValueError):
    """The judge produced something that is not a verdict."""


class Judge(Protocol):
    key: str  # identifies the judge and its settings (part of the verdict cache key)

    def compare(self, prompt: Prompt, first: str, second: str) -> OrderVerdict: ...


@runtime_checkable
class AsyncJudge(Judge, Protocol):
    """A judge whose requests go out on an event loop (a chat API): many in flight, no thread each."""

    def async_client(self) -> Any: ...

    async def acompare(self, client: Any, prompt: Prompt, first: str, second: str) -> OrderVerdict: ...


ORDER_OF: dict[str, OrderVerdict] = {"a": "first", "b": "second", "tie": "tie"}


class VerdictCache:
    """Verdicts on disk (JSON lines, appended): judging the same thing twice costs nothing, and a
    judge killed mid-way resumes from the verdicts it had written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._verdicts: dict[str, str] = {}
        self._lock = threading.Lock()  # comparisons run in several threads
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a writer that was killed mid-write
                self._verdicts[record["key"]] = record["verdict"]

    @staticmethod
    def key(judge_key: str, prompt: Prompt, first: str, second: str) -> str:
        return hashlib.sha256(json.dumps([judge_key, prompt, first, second]).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self._verdicts.get(key)

    def put(self, key: str, verdict: str) -> None:
        with self._lock:
            self._verdicts[key] = verdict
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "verdict": verdict}) + "\n")


@dataclass
class SideBySide:
    """The result of judging responses A against responses B."""

    records: list[dict]  # per comparison: prompt_id, both order verdicts, outcome for A
    win_rate: WinRate | None  # of A over B; None when every comparison was invalid
    length_controlled: WinRate | None
    flip_rate: float  # share of valid comparisons whose verdict flipped with the order
    invalid: int
    judge_calls: int  # backend calls made (cache hits excluded)
    mean_length: dict[str, float] = field(default_factory=dict)
    usage: dict | None = None  # tokens (and cost) of a judge that counts them: the chat judge

    def to_dict(self) -> dict:
        out = asdict(self)
        out["records"] = len(self.records)
        return out


def pair_responses(first: list[dict], second: list[dict]) -> list[dict]:
    """Comparison items from two response sets (as :func:`gpo_core.generate.generate_responses`
    writes them), matched by (prompt id, sample): A is ``first``, B is ``second``. A
    conversational prompt stays a conversation: a chat judge sends it as messages."""
    theirs = {(r["prompt_id"], r.get("sample", 0)): r["response"] for r in second}
    items = []
    for record in first:
        key = (record["prompt_id"], record.get("sample", 0))
        if key in theirs:
            items.append(
                {
                    "prompt_id": record["prompt_id"],
                    "prompt": record["prompt"],
                    "a": record["response"],
                    "b": theirs[key],
                }
            )
    return items


_CALLS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="judge-call")


def call_until_stopped(call, should_stop: StopCheck | None, poll_s: float = 0.25):
    """``call()``; with ``should_stop``, in a helper thread while this one keeps asking it, so a
    stop is seen within ``poll_s`` even while a slow endpoint holds the call (which then finishes,
    bounded by the client's timeout, in the background, unobserved)."""
    if should_stop is None:
        return call()
    future = _CALLS.submit(call)
    while True:
        try:
            return future.result(timeout=poll_s)
        except concurrent.futures.TimeoutError:
            check(should_stop)


async def _judge_all(
    judge: Judge,
    comparisons: list[tuple[Prompt, str, str]],
    cache: VerdictCache | None,
    retries: int,
    concurrency: int,
    should_stop: StopCheck | None,
) -> list[tuple[str, int]]:
    """(verdict or "invalid", backend calls made) of every comparison, in order, each served from
    the cache or asked up to ``1 + retries`` times; at most ``concurrency`` in flight: on one
    event loop for a judge with ``acompare`` (a chat API: requests cost no thread), on that many
    threads for the others. A stop request is seen within a quarter second; the requests out are
    cancelled (a call on a thread cannot be: it finishes unobserved and its verdict is dropped)."""
    loop = asyncio.get_running_loop()
    native = isinstance(judge, AsyncJudge)
    client = judge.async_client() if isinstance(judge, AsyncJudge) else None
    threads = None if native else concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="judge")
    in_flight = asyncio.Semaphore(concurrency)

    async def compare(prompt: Prompt, first: str, second: str) -> OrderVerdict:
        if isinstance(judge, AsyncJudge):
            return await judge.acompare(client, prompt, first, second)
        return await loop.run_in_executor(threads, judge.compare, prompt, first, second)

    async def judge_once(prompt: Prompt, first: str, second: str) -> tuple[str, int]:
        key = VerdictCache.key(judge.key, prompt, first, second) if cache else ""
        if cache and (hit := cache.get(key)) is not None:
            return hit, 0
        async with in_flight:
            for calls in range(1, retries + 2):
                try:
                    verdict = await compare(prompt, first, second)
                except JudgeOutputError:
                    continue
                if cache:
                    cache.put(key, verdict)
                return verdict, calls
            return "invalid", retries + 1

    tasks = [asyncio.ensure_future(judge_once(*comparison)) for comparison in comparisons]
    everything = asyncio.gather(*tasks)
    try:
        while True:
            done, _ = await asyncio.wait({everything}, timeout=0.25)
            if done:
                return everything.result()
            if should_stop is not None:
                await asyncio.to_thread(check, should_stop)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(everything, return_exceptions=True)
        if client is not None:
            await client.close()
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


def _run_to_end(coroutine):
    """``asyncio.run(coroutine)``, also where this thread already runs an event loop (a notebook,
    an async service): then on a thread of its own, since a loop cannot be nested."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="judge-loop") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def side_by_side(
    judge: Judge,
    items: Sequence[dict],
    cache: VerdictCache | None = None,
    retries: int = 2,
    seed: int = 0,
    should_stop: StopCheck | None = None,
    concurrency: int = 1,
) -> SideBySide:
    """``items``: dicts with ``prompt_id``, ``prompt``, ``a`` and ``b`` (the two responses); up to
    ``concurrency`` comparisons in flight. ``should_stop`` is asked while they run (the verdicts
    so far stay in the cache). Two identical responses are a tie without asking the judge: what it
    said about them would be about the slots (a policy near its reference often answers as it does,
    and those answers must not read as the judge's position bias, nor cost a call)."""
    different = [item for item in items if item["a"].strip() != item["b"].strip()]
    comparisons = [
        (item["prompt"], first, second)
        for item in different
        for first, second in ((item["a"], item["b"]), (item["b"], item["a"]))
    ]
    judged = _run_to_end(_judge_all(judge, comparisons, cache, retries, concurrency, should_stop))
    verdicts = iter(judged)
    records, calls_made = [], 0
    for item in items:
        if item["a"].strip() == item["b"].strip():
            (first_order, n1), (second_order, n2) = ("tie", 0), ("tie", 0)
        else:
            (first_order, n1), (second_order, n2) = next(verdicts), next(verdicts)
        calls_made += n1 + n2
        if "invalid" in (first_order, second_order):
            outcome = "invalid"
        else:
            # In A's terms: the first order puts A first, the second puts B first.
            a_first = {"first": "win", "second": "loss", "tie": "tie"}[first_order]
            b_first = {"first": "loss", "second": "win", "tie": "tie"}[second_order]
            outcome = a_first if a_first == b_first else "tie"
        flipped = {first_order, second_order} == {"first"} or {first_order, second_order} == {"second"}
        records.append(
            {
                "prompt_id": item["prompt_id"],
                "a_first": first_order,
                "b_first": second_order,
                "outcome": outcome,
                "flipped": flipped,
                "length_difference": len(item["a"].split()) - len(item["b"].split()),
            }
        )
    valid = [r for r in records if r["outcome"] != "invalid"]
    by_prompt: dict = {}
    for r in valid:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    groups = list(by_prompt.values())
    outcomes = [[r["outcome"] for r in g] for g in groups]
    differences = [[float(r["length_difference"]) for r in g] for g in groups]
    return SideBySide(
        records=records,
        win_rate=win_rate(outcomes, seed=seed) if groups else None,
        length_controlled=length_controlled_win_rate(outcomes, differences, resamples=500, seed=seed)
        if groups
        else None,
        flip_rate=sum(r["flipped"] for r in valid) / len(valid) if valid else 0.0,
        invalid=len(records) - len(valid),
        judge_calls=calls_made,
        mean_length={
            "a": sum(len(i["a"].split()) for i in items) / max(1, len(items)),
            "b": sum(len(i["b"].split()) for i in items) / max(1, len(items)),
        },
        usage=judge.usage.to_dict() if hasattr(judge, "usage") else None,
    )
