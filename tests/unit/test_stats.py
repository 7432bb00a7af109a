"""Win rate with ties as halves and a bootstrap interval over prompts."""

import math

import numpy as np
import pytest

from gpo_core.stats import win_rate


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
