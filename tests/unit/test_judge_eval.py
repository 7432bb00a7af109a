"""A judge's own accuracy (gpo judge-eval): closed forms for judges whose verdicts are known, the
built-in task's oracle against its gold reward, and the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpo_core.data import load_preferences
from gpo_core.judging.evaluation import evaluate_judge
from gpo_core.judging.judges import OracleTaskJudge


class AlwaysFirst:
    """Says the first response is better whatever it says: pure position bias."""

    key = "always-first"

    def compare(self, prompt: str, first: str, second: str) -> str:
        return "first"


class Longer:
    """Prefers the longer response (a tie when equally long)."""

    key = "longer"

    def compare(self, prompt: str, first: str, second: str) -> str:
        a, b = len(first.split()), len(second.split())
        return "first" if a > b else "second" if b > a else "tie"


PAIRS = [
    {"prompt": "p1", "chosen": "a b c", "rejected": "a"},  # longer is chosen: agree
    {"prompt": "p2", "chosen": "a b", "rejected": "a b c d"},  # longer is rejected: disagree
    {"prompt": "p3", "chosen": "a b c", "rejected": "a b"},  # agree
    {"prompt": "p4", "chosen": "x y", "rejected": "z w"},  # equally long: a tie, counts one half
]


def test_a_judge_that_follows_the_slot_is_flagged() -> None:
    figures = evaluate_judge(AlwaysFirst(), PAIRS)
    assert figures["position_bias"] == 1.0 and figures["agreement"]["rate"] == 0.5
    assert figures["signal"] == 0.0 and figures["position_bias_exceeds_signal"] is True


def test_agreement_ties_and_position_bias_by_hand() -> None:
    figures = evaluate_judge(Longer(), PAIRS)
    assert figures["agreement"]["rate"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert figures["position_bias"] == 0.0 and figures["tie_rate"] == 0.25 and figures["invalid_rate"] == 0.0
    assert figures["signal"] == pytest.approx(0.25) and figures["position_bias_exceeds_signal"] is False
    assert "gold_agreement" not in figures


def test_the_oracle_agrees_with_the_gold_reward(small_task) -> None:
    pairs = load_preferences(small_task.artifacts.eval_pairs)
    figures = evaluate_judge(OracleTaskJudge(small_task), pairs)
    assert figures["gold_agreement"] == 1.0  # it judges by the gold reward itself
    assert figures["position_bias"] == 0.0
    # The labels were drawn from a Bradley-Terry model of the gold reward: noisier than the gold.
    assert 0.5 < figures["agreement"]["rate"] <= 1.0


def test_gpo_judge_eval_prints_the_figures(small_task) -> None:
    gpo = str(Path(sys.executable).parent / "gpo")
    command = [gpo, "judge-eval", small_task.artifacts.eval_pairs, "--task", small_task.root, "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    pairs = load_preferences(small_task.artifacts.eval_pairs)
    assert figures["gold_agreement"] == 1.0 and figures["pairs"] == len(pairs)
