"""Side-by-side statistics with honest uncertainty.

Comparisons are grouped by prompt: several comparisons of one prompt are not independent
evidence, so every interval is a paired bootstrap over prompts (both systems answered the same
prompts). Ties count one half.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass(frozen=True)
class WinRate:
    rate: float
    low: float  # 95% paired bootstrap interval
    high: float
    stderr: float  # standard deviation of the bootstrap distribution
    prompts: int
    comparisons: int
    wins: int
    ties: int
    losses: int

    def to_dict(self) -> dict:
        return asdict(self)


def _scores(outcomes_per_prompt: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not outcomes_per_prompt or any(len(o) == 0 for o in outcomes_per_prompt):
        raise ValueError("every prompt needs at least one comparison")
    flat = [o for outcomes in outcomes_per_prompt for o in outcomes]
    unknown = set(flat) - OUTCOME_SCORE.keys()
    if unknown:
        raise ValueError(f"unknown outcomes {sorted(unknown)}; use win, tie or loss")
    scores = np.array([sum(OUTCOME_SCORE[o] for o in outcomes) for outcomes in outcomes_per_prompt])
    counts = np.array([len(outcomes) for outcomes in outcomes_per_prompt], dtype=float)
    return scores, counts, flat


def win_rate(outcomes_per_prompt: Sequence[Sequence[str]], resamples: int = 10_000, seed: int = 0) -> WinRate:
    """``outcomes_per_prompt[i]``: the outcomes ("win", "tie", "loss") of prompt i's comparisons."""
    scores, counts, flat = _scores(outcomes_per_prompt)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(scores), size=(resamples, len(scores)))
    boot = scores[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return WinRate(
        rate=float(scores.sum() / counts.sum()),
        low=float(low),
        high=float(high),
        stderr=float(boot.std(ddof=1)),
        prompts=len(scores),
        comparisons=len(flat),
        wins=flat.count("win"),
        ties=flat.count("tie"),
        losses=flat.count("loss"),
    )


@dataclass(frozen=True)
class Difference:
    """Win rate of run A minus that of run B, both against the same baseline on the same prompts."""

    difference: float
    low: float  # 95% paired bootstrap interval
    high: float
    prompts: int  # judged for both runs

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: the data says which run is better."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "resolved": self.resolved}


def paired_difference(
    a: Mapping[str, Sequence[str]], b: Mapping[str, Sequence[str]], resamples: int = 10_000, seed: int = 0
) -> Difference:
    """``a[prompt]``, ``b[prompt]``: the outcomes of two runs' comparisons with the same baseline,
    by prompt. The difference of their win rates on the prompts both were judged on, with a
    bootstrap that resamples prompts and takes both runs' comparisons of each prompt drawn: the
    runs answered the same prompts, so what makes a prompt easy for one makes it easy for the other
    and cancels, which an interval from two independent bootstraps would not see."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs share no judged prompt")
    scores_a, counts_a, _ = _scores([a[p] for p in common])
    scores_b, counts_b, _ = _scores([b[p] for p in common])
    picks = np.random.default_rng(seed).integers(0, len(common), size=(resamples, len(common)))
    boot = scores_a[picks].sum(1) / counts_a[picks].sum(1) - scores_b[picks].sum(1) / counts_b[picks].sum(1)
    low, high = np.quantile(boot, [0.025, 0.975])
    difference = scores_a.sum() / counts_a.sum() - scores_b.sum() / counts_b.sum()
    return Difference(float(difference), float(low), float(high), len(common))


def _fit_length_model(targets: np.ndarray, length_feature: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Logistic regression ``P(win) = sigmoid(a + b * feature)`` on targets in [0, 1] (ties 0.5),
    by Newton's method with a tiny ridge so that separable data stays finite."""
    x = np.stack([np.ones_like(length_feature), length_feature], axis=1)
    theta = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ theta)))
        gradient = x.T @ (targets - p) - 1e-6 * theta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def length_controlled_win_rate(
    outcomes_per_prompt: Sequence[Sequence[str]],
    length_differences: Sequence[Sequence[float]],
    resamples: int = 2000,
    seed: int = 0,
) -> WinRate:
    """The win rate with the length difference regressed out, in the spirit of AlpacaEval's:
    fit ``P(win) = sigmoid(a + b * tanh(d / sd(d)))`` where ``d`` is len(A) - len(B), and report
    ``sigmoid(a)``, the predicted win rate at equal length. Paired bootstrap over prompts."""
    _, counts, flat = _scores(outcomes_per_prompt)
    if [len(d) for d in length_differences] != [len(o) for o in outcomes_per_prompt]:
        raise ValueError("need one length difference per comparison")
    prompt_of = np.repeat(np.arange(len(outcomes_per_prompt)), counts.astype(int))
    targets = np.array([OUTCOME_SCORE[o] for o in flat])
    diffs = np.array([d for row in length_differences for d in row], dtype=float)
    scale = diffs.std() or 1.0

    def fit(rows: np.ndarray) -> float:
        a, _ = _fit_length_model(targets[rows], np.tanh(diffs[rows] / scale))
        return float(1 / (1 + math.exp(-a)))

    rate = fit(np.arange(len(targets)))
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(prompt_of == i) for i in range(len(outcomes_per_prompt))]
    boot = []
    for _ in range(resamples):
        chosen = rng.integers(0, len(members), size=len(members))
        boot.append(fit(np.concatenate([members[i] for i in chosen])))
    low, high = np.quantile(boot, [0.025, 0.975])
    return WinRate(
        rate=rate,
        low=float(low),
        high=float(high),
        stderr=float(np.std(boot, ddof=1)),
        prompts=len(outcomes_per_prompt),
        comparisons=len(flat),
        wins=flat.count("win"),
        ties=flat.count("tie"),
        losses=flat.count("loss"),
    )


@dataclass(frozen=True)
class Strengths:
    """Bradley-Terry log-strengths (the first system fixed at 0) with 95% bootstrap intervals."""

    names: list[str]
    strength: list[float]
    low: list[float]
    high: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def _bradley_terry(wins: np.ndarray, iterations: int = 1000) -> np.ndarray:
    """MM algorithm (Hunter 2004) for ``P(i beats j) = p_i / (p_i + p_j)``; wins[i, j] counts i over
    j (ties as halves). A pseudo-count of 0.5 each way keeps unbeaten systems finite."""
    w = wins + 0.5 * (1 - np.eye(len(wins)))
    games = w + w.T
    p = np.ones(len(w))
    for _ in range(iterations):
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)
        updated = w.sum(axis=1) / denominator
        updated /= updated[0]
        if np.abs(np.log(updated) - np.log(p)).max() < 1e-10:
            p = updated
            break
        p = updated
    return np.log(p)


def bradley_terry_strengths(
    names: Sequence[str], comparisons: Sequence[tuple[str, int, int, str]], resamples: int = 1000, seed: int = 0
) -> Strengths:
    """``comparisons``: (prompt id, index of A, index of B, outcome for A). Bootstrap over prompts."""
    k = len(names)
    prompts = sorted({c[0] for c in comparisons})
    index = {p: i for i, p in enumerate(prompts)}
    per_prompt = np.zeros((len(prompts), k, k))
    for prompt, a, b, outcome in comparisons:
        score = OUTCOME_SCORE[outcome]
        per_prompt[index[prompt], a, b] += score
        per_prompt[index[prompt], b, a] += 1 - score
    strength = _bradley_terry(per_prompt.sum(axis=0))
    rng = np.random.default_rng(seed)
    boot = np.array(
        [_bradley_terry(per_prompt[rng.integers(0, len(prompts), len(prompts))].sum(axis=0)) for _ in range(resamples)]
    )
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    return Strengths(list(names), strength.tolist(), low.tolist(), high.tolist())
