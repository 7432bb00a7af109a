"""Long work stops when asked (a cancelled job, a stopping worker, a deadline): building the built-in
task, sampling and judging each raise Stopped at their next unit of work and leave nothing half
written; a judge call held by a slow endpoint does not delay the stop."""

import threading
import time

import pytest

from gpo_core.generate import SamplingSettings, generate_responses
from gpo_core.judging.comparison import VerdictCache, side_by_side
from gpo_core.stopping import Stopped
from gpo_core.task.build import build_task, task_settings


class AfterCalls:
    """``should_stop`` that turns true after ``n`` questions (counting them)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


def test_a_task_build_stops_at_its_next_step_and_leaves_nothing(tmp_path) -> None:
    stop = AfterCalls(3)
    started = time.monotonic()
    with pytest.raises(Stopped):
        build_task(tmp_path, task_settings("small", seed=777), should_stop=stop)
    assert stop.calls == 4 and time.monotonic() - started < 30  # the 4th fine-tuning step asked, and stopped
    assert list(tmp_path.iterdir()) == []  # no half-built task, no manifest


def test_sampling_stops_between_batches(small_task) -> None:
    prompts = [{"id": f"p{i}", "prompt": f"post {i}"} for i in range(12)]
    settings = SamplingSettings(max_new_tokens=4, batch_size=4)
    stop = AfterCalls(1)
    with pytest.raises(Stopped):
        generate_responses(small_task.artifacts.model_dir, prompts, settings, should_stop=stop)
    assert stop.calls == 2  # the second batch of three was never sampled


class SlowJudge:
    """A judge whose every comparison takes ``seconds`` (an endpoint that answers slowly)."""

    key = "slow"

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    def compare(self, prompt: str, first: str, second: str) -> str:
        self.calls += 1
        time.sleep(self.seconds)
        return "first"


def test_judging_stops_within_a_fraction_of_a_second_even_inside_a_slow_call(tmp_path) -> None:
    items = [{"prompt_id": f"p{i}", "prompt": f"post {i}", "a": "x", "b": "y"} for i in range(10)]
    judge, cancelled = SlowJudge(5.0), threading.Event()
    threading.Timer(0.5, cancelled.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        side_by_side(judge, items, cache=VerdictCache(tmp_path / "verdicts.jsonl"), should_stop=cancelled.is_set)
    assert time.monotonic() - started < 1.5  # not the 5 s of the call in flight, nor the 100 s of all of them
    assert judge.calls == 1


def test_judging_without_a_stop_check_is_unchanged(tmp_path) -> None:
    items = [{"prompt_id": f"p{i}", "prompt": f"post {i}", "a": "x", "b": "y"} for i in range(3)]
    result = side_by_side(SlowJudge(0.0), items, cache=VerdictCache(tmp_path / "verdicts.jsonl"))
    assert result.judge_calls == 6 and result.flip_rate == 1.0  # "first" in both orders: a flip, a tie
