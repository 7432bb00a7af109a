"""Win rate with ties as halves and a bootstrap interval over prompts."""

import math

import numpy as np
import pytest

from gpo_core.stats import (
    bootstrap_rates,
    bradley_terry_strengths,
    grid,
    length_controlled_win_rate,
    paired_difference,
    win_rate,
)


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


def test_length_control_stays_finite_when_a_resample_separates_on_length() -> None:
    """Six prompts, the one loss at a length difference shared with a win: some bootstrap resamples
    hold only the other prompts, where wins alone remain and the fit's intercept runs off to
    hundreds. That overflowed ``math.exp`` once (a sweep's judge stage, a 200-step run); the rate
    stays a probability."""
    outcomes = [["win"], ["win"], ["loss"], ["win"], ["win"], ["win"]]
    differences = [[7.0], [13.0], [13.0], [2.0], [16.0], [15.0]]
    lc = length_controlled_win_rate(outcomes, differences, resamples=500, seed=0)
    assert 0.0 <= lc.low <= lc.rate <= lc.high <= 1.0


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


def test_paired_difference_of_identical_and_opposite_runs() -> None:
    same = {str(i): ["win", "loss"][i % 2 : i % 2 + 1] for i in range(40)}
    nothing = paired_difference(same, same)
    assert nothing.difference == nothing.low == nothing.high == 0.0 and not nothing.resolved
    wins, losses = {p: ["win"] for p in same}, {p: ["loss"] for p in same}
    assert paired_difference(wins, losses).to_dict() == {
        "difference": 1.0, "low": 1.0, "high": 1.0, "prompts": 40, "seeds": 1, "seed_share": None, "resolved": True,
    }  # fmt: skip


def test_paired_difference_interval_is_the_paired_normal_one_and_narrower_than_unpaired() -> None:
    """One comparison per prompt: the difference is mean(x - y), its standard error std(x - y)/sqrt(n)
    (paired), much smaller than sqrt(var x + var y)/sqrt(n) when the runs agree on most prompts."""
    rng = np.random.default_rng(3)
    n = 400
    x = rng.random(n) < 0.6
    y = np.where(rng.random(n) < 0.15, ~x, x)  # B agrees with A on 85% of prompts
    y[: n // 10] = False  # and loses some that A wins
    a = {str(i): ["win" if x[i] else "loss"] for i in range(n)}
    b = {str(i): ["win" if y[i] else "loss"] for i in range(n)}
    d = x.astype(float) - y.astype(float)
    result = paired_difference(a, b, resamples=20_000, seed=1)
    assert result.difference == pytest.approx(d.mean())
    paired = 1.96 * d.std() / math.sqrt(n)
    assert result.high - result.low == pytest.approx(2 * paired, rel=0.1)
    unpaired = 1.96 * math.sqrt(x.var() + y.var()) / math.sqrt(n)
    assert paired < 0.8 * unpaired


def test_paired_difference_uses_the_prompts_both_runs_were_judged_on() -> None:
    a = {"1": ["win"], "2": ["win"], "3": ["loss"]}
    b = {"2": ["loss"], "3": ["loss"], "4": ["win"]}
    result = paired_difference(a, b)
    assert result.prompts == 2 and result.difference == pytest.approx(0.5 - 0.0)
    with pytest.raises(ValueError, match="share no judged prompt"):
        paired_difference({"1": ["win"]}, {"2": ["win"]})


def test_one_run_by_prompt_is_the_prompt_bootstrap() -> None:
    outcomes = [["win", "tie"], ["loss"], ["win"], ["loss", "loss"], ["win"]]
    by_prompt = {f"p{i}": o for i, o in enumerate(outcomes)}
    assert win_rate(by_prompt) == win_rate(outcomes) == win_rate([by_prompt])
    assert win_rate(outcomes).seeds == 1 and win_rate(outcomes).seed_share is None


def test_the_two_way_bootstrap_draws_seeds_and_prompts_as_an_explicit_loop_does() -> None:
    """The resampled rates of the multiplicity form equal a loop that picks seed i and prompt j
    for every drawn pair, from the same random draws."""
    rng = np.random.default_rng(4)
    runs = [
        {f"p{j}": list(rng.choice(["win", "tie", "loss"], size=rng.integers(1, 4))) for j in range(7)} for _ in range(3)
    ]
    prompts = sorted(runs[0])
    scores, counts = grid(runs, prompts)
    boot = bootstrap_rates([(scores, counts)], resamples=50, seed=9)[0]
    draws = np.random.default_rng(9)
    prompt_picks = draws.integers(0, 7, size=(50, 7))
    seed_picks = draws.integers(0, 3, size=(50, 3))
    for r in range(50):
        won = sum(scores[i, j] for i in seed_picks[r] for j in prompt_picks[r])
        judged = sum(counts[i, j] for i in seed_picks[r] for j in prompt_picks[r])
        assert boot[r] == pytest.approx(won / judged)


def test_a_verdict_that_flips_with_the_seed_is_not_resolved() -> None:
    """A beats B clearly under seed 0 and loses clearly under seed 1: each seed alone resolves the
    difference (in opposite directions); the two seeds together do not, and the spread is the
    seeds' (every prompt agrees within a seed)."""
    prompts = [str(i) for i in range(60)]
    wins, losses = {p: ["win"] for p in prompts}, {p: ["loss"] for p in prompts}
    half = {p: ["win" if int(p) % 2 else "loss"] for p in prompts}
    assert paired_difference(wins, half).low > 0 and paired_difference(losses, half).high < 0
    both = paired_difference([wins, losses], [half, half], resamples=4000)
    assert both.difference == pytest.approx(0.0) and not both.resolved and both.seeds == 2
    assert both.low < -0.4 and both.high > 0.4  # a draw of seed 1 twice: -0.5 (and prompt noise)
    assert both.seed_share is not None and both.seed_share > 0.9
    cell = win_rate([wins, losses], resamples=4000)
    assert (cell.rate, cell.low, cell.high, cell.seeds) == (0.5, 0.0, 1.0, 2)
    assert cell.seed_share == pytest.approx(1.0)


def test_seeds_that_agree_leave_the_prompts_spread() -> None:
    """Two seeds with the same outcomes: the seeds add nothing, the interval is the prompts'."""
    rng = np.random.default_rng(5)
    run = {str(i): ["win" if rng.random() < 0.6 else "loss"] for i in range(400)}
    alone, twice = win_rate(run, resamples=4000), win_rate([run, run], resamples=4000)
    assert twice.rate == alone.rate and twice.seed_share == pytest.approx(0.0, abs=1e-12)
    assert twice.high - twice.low == pytest.approx(alone.high - alone.low, rel=0.1)
    with pytest.raises(ValueError, match="1 and 2 seeds"):
        paired_difference(run, [run, run])
