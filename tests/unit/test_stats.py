"""Win rate with ties as halves and a bootstrap interval over prompts."""

import math

import numpy as np
import pytest

from gpo_core.stats import bradley_terry_strengths, length_controlled_win_rate, win_rate


def test_rate_counts_ties_as_half() -> None:
    result = win_rate([["win", "tie"], ["loss"], ["win", "win", "tie"]])
    assert result.rate == pytest.approx((3 + 2 * 0.5) / 6)
    assert (result.wins, result.ties, result.losses, result.prompts, result.comparisons) == (3, 2, 1, 3, 6)
    assert result.low <= result.rate <= result.high


def test_unanimous_outcomes_have_a_degenerate_interval() -> None:
    result = win_rate([["win"]] * 20)
    assert (result.rate, result.low, result.high) == (1.0, 1.0, 1.0)


def test_interval_matches_the_normal_approximation_for_independent_prompts() -> None:
    rng = np.random.default_rng(1)
    outcomes = [["win" if rng.random() < 0.6 else "loss"] for _ in range(2000)]
    result = win_rate(outcomes, resamples=4000)
    half_width = 1.96 * math.sqrt(result.rate * (1 - result.rate) / 2000)
    assert (result.high - result.low) / 2 == pytest.approx(half_width, rel=0.1)
    assert result.low < 0.6 < result.high


def test_bad_outcomes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one comparison"):
        win_rate([["win"], []])
    with pytest.raises(ValueError, match=r"unknown outcomes \['draw'\]"):
        win_rate([["draw"]])


def test_stderr_matches_the_binomial_standard_error() -> None:
    rng = np.random.default_rng(2)
    outcomes = [["win" if rng.random() < 0.7 else "loss"] for _ in range(1000)]
    result = win_rate(outcomes, resamples=4000)
    assert result.stderr == pytest.approx(math.sqrt(result.rate * (1 - result.rate) / 1000), rel=0.1)


def test_all_ties_is_one_half_everywhere() -> None:
    outcomes = [["tie", "tie"]] * 50
    assert win_rate(outcomes).rate == 0.5
    lc = length_controlled_win_rate(outcomes, [[3.0, -2.0]] * 50, resamples=200)
    assert lc.rate == pytest.approx(0.5, abs=1e-6)
    strengths = bradley_terry_strengths(["a", "b"], [(f"p{i}", 0, 1, "tie") for i in range(30)], resamples=100)
    assert strengths.strength == pytest.approx([0.0, 0.0], abs=1e-6)


def test_length_control_removes_a_planted_length_preference() -> None:
    """A judge that only likes length: A is usually longer, so A 'wins' often; at equal length
    the true win rate is 1/2, which the length-controlled rate recovers."""
    rng = np.random.default_rng(3)
    outcomes, differences = [], []
    for _ in range(1500):
        d = rng.normal(8.0, 10.0)  # A is longer on average
        p = 1 / (1 + math.exp(-2.0 * math.tanh(d / 10.0)))
        outcomes.append(["win" if rng.random() < p else "loss"])
        differences.append([d])
    raw = win_rate(outcomes)
    lc = length_controlled_win_rate(outcomes, differences, resamples=300)
    assert raw.rate > 0.65
    assert lc.low < 0.5 < lc.high and abs(lc.rate - 0.5) < 0.06


def test_bradley_terry_recovers_known_strengths() -> None:
    rng = np.random.default_rng(4)
    truth = np.array([0.0, 1.0, -0.5])
    comparisons = []
    for prompt in range(600):
        for a, b in ((0, 1), (0, 2), (1, 2)):
            p = 1 / (1 + math.exp(-(truth[a] - truth[b])))
            comparisons.append((f"p{prompt}", a, b, "win" if rng.random() < p else "loss"))
    result = bradley_terry_strengths(["ref", "strong", "weak"], comparisons, resamples=200)
    assert result.strength == pytest.approx(truth.tolist(), abs=0.15)
    for value, low, high in zip(result.strength, result.low, result.high, strict=True):
        assert low <= value <= high
