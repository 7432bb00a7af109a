"""Side-by-side statistics with honest uncertainty.

Comparisons are grouped by prompt: several comparisons of one prompt are not independent
evidence, so every interval is a paired bootstrap over prompts (both systems answered the same
prompts). Ties count one half.

A sweep's cell (a loss at a beta) may be trained with several seeds. Its win rate then pools every
seed's comparisons, and its interval comes from a two-way bootstrap that draws seeds and prompts
with replacement (crossed: every drawn seed is scored on the same drawn prompts), so training's own
randomness is in the interval beside the prompts'. With one seed it is the prompt bootstrap. How
much of the spread is the seeds' (``seed_share``) compares the bootstrap variance with only seeds
drawn to that with only prompts drawn. With few seeds the seed part is underestimated (a bootstrap
of S draws has (S-1)/S of the variance), which two or three seeds cannot avoid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeAlias

import numpy as np
from scipy.special import expit

OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}

ByPrompt: TypeAlias = Mapping[str, Sequence[str]]  # one run's comparison outcomes, by prompt id
Seeds: TypeAlias = ByPrompt | Sequence[ByPrompt]  # one run, or a cell's runs (one per seed)


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
    seeds: int = 1
    seed_share: float | None = None  # of the bootstrap variance, the seeds' part; None with one seed

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


def _multiplicities(picks: np.ndarray, size: int) -> np.ndarray:
    """(resamples, size): how often each index was drawn in each resample."""
    flat = (picks + size * np.arange(len(picks))[:, None]).ravel()
    return np.bincount(flat, minlength=len(picks) * size).reshape(len(picks), size).astype(float)


def bootstrap_rates(
    grids: Sequence[tuple[np.ndarray, np.ndarray]], resamples: int, seed: int, draw: str = "both"
) -> np.ndarray:
    """Bootstrap rates of each (scores, counts) grid, all of shape (..., seeds, prompts), under the
    same draws: (len(grids), ..., resamples). ``draw``: "both", or only "seeds" or "prompts"."""
    seeds, prompts = grids[0][0].shape[-2:]
    rng = np.random.default_rng(seed)
    if draw == "seeds":
        by_prompt = np.ones((resamples, prompts))
    else:
        by_prompt = _multiplicities(rng.integers(0, prompts, size=(resamples, prompts)), prompts)
    if draw == "prompts" or seeds == 1:
        by_seed = np.ones((resamples, seeds))
    else:
        by_seed = _multiplicities(rng.integers(0, seeds, size=(resamples, seeds)), seeds)
    rates = []
    for scores, counts in grids:
        total = ((scores @ by_prompt.T) * by_seed.T).sum(-2)  # (..., resamples)
        rates.append(total / ((counts @ by_prompt.T) * by_seed.T).sum(-2))
    return np.stack(rates)


def seed_share(grids: Sequence[tuple[np.ndarray, np.ndarray]], combine: str, resamples: int, seed: int) -> float | None:
    """The seeds' share of the bootstrap variance of ``combine`` ("rate" of the one grid, or
    "difference" of the two): variance with only seeds drawn over that plus the prompts' alone."""
    if grids[0][0].shape[-2] == 1:
        return None
    parts = []
    for draw in ("seeds", "prompts"):
        boot = bootstrap_rates(grids, resamples, seed, draw)
        parts.append(float((boot[0] - boot[1] if combine == "difference" else boot[0]).var()))
    return parts[0] / sum(parts) if sum(parts) > 0 else 0.0


def _runs(cell: Seeds) -> list[ByPrompt]:
    return [cell] if isinstance(cell, Mapping) else list(cell)


def shared_prompts(*cells: Seeds) -> list[str]:
    """The prompts every run of every cell was judged on."""
    runs = [run for cell in cells for run in _runs(cell)]
    return sorted(set.intersection(*(set(run) for run in runs))) if runs else []


def grid(cell: Seeds, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A cell's (seeds, prompts) arrays of summed scores and of comparison counts."""
    per_run = [_scores([run[p] for p in prompts])[:2] for run in _runs(cell)]
    return np.stack([scores for scores, _ in per_run]), np.stack([counts for _, counts in per_run])


def win_rate(outcomes: Sequence[Sequence[str]] | Seeds, resamples: int = 10_000, seed: int = 0) -> WinRate:
    """The win rate of one run (``outcomes[i]``: the outcomes "win", "tie", "loss" of prompt i's
    comparisons, or a mapping of them by prompt id) or of a cell's runs, one mapping per seed,
    on the prompts every seed was judged on."""
    if isinstance(outcomes, Mapping) or (outcomes and isinstance(outcomes[0], Mapping)):
        cell = _runs(outcomes)  # type: ignore[arg-type]
        prompts = shared_prompts(cell)
        if not prompts:
            raise ValueError("the seeds share no judged prompt")
        per_run = [[run[p] for p in prompts] for run in cell]
    else:
        per_run = [list(outcomes)]  # type: ignore[arg-type]
    scores, counts = (np.stack(a) for a in zip(*(_scores(run)[:2] for run in per_run), strict=True))
    flat = [o for run in per_run for outcomes_of_prompt in run for o in outcomes_of_prompt]
    boot = bootstrap_rates([(scores, counts)], resamples, seed)[0]
    low, high = np.quantile(boot, [0.025, 0.975])
    return WinRate(
        rate=float(scores.sum() / counts.sum()),
        low=float(low),
        high=float(high),
        stderr=float(boot.std(ddof=1)),
        prompts=scores.shape[1],
        comparisons=len(flat),
        wins=flat.count("win"),
        ties=flat.count("tie"),
        losses=flat.count("loss"),
        seeds=len(per_run),
        seed_share=seed_share([(scores, counts)], "rate", min(resamples, 2000), seed),
    )


@dataclass(frozen=True)
class Difference:
    """Win rate of run (or cell) A minus that of B, both against the same baseline on the same
    prompts."""

    difference: float
    low: float  # 95% paired bootstrap interval
    high: float
    prompts: int  # judged for both runs
    seeds: int = 1
    seed_share: float | None = None

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: the data says which run is better."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "resolved": self.resolved}


def paired_difference(a: Seeds, b: Seeds, resamples: int = 10_000, seed: int = 0) -> Difference:
    """``a``, ``b``: two runs' outcomes against the same baseline, by prompt (or two cells' runs,
    one per seed, paired seed by seed). The difference of their win rates on the prompts all were
    judged on, with a bootstrap that draws prompts (and seeds) and takes both sides' comparisons of
    each draw: the runs answered the same prompts, so what makes a prompt easy for one makes it easy
    for the other and cancels, which an interval from two independent bootstraps would not see."""
    runs_a, runs_b = _runs(a), _runs(b)
    if len(runs_a) != len(runs_b):
        raise ValueError(f"the two cells have {len(runs_a)} and {len(runs_b)} seeds; pairing needs as many")
    common = shared_prompts(runs_a, runs_b)
    if not common:
        raise ValueError("the two runs share no judged prompt")
    grids = [grid(runs_a, common), grid(runs_b, common)]
    boot = bootstrap_rates(grids, resamples, seed)
    low, high = np.quantile(boot[0] - boot[1], [0.025, 0.975])
    (scores_a, counts_a), (scores_b, counts_b) = grids
    difference = scores_a.sum() / counts_a.sum() - scores_b.sum() / counts_b.sum()
    share = seed_share(grids, "difference", min(resamples, 2000), seed)
    return Difference(float(difference), float(low), float(high), len(common), len(runs_a), share)


def _fit_length_model(targets: np.ndarray, length_feature: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Logistic regression ``P(win) = sigmoid(a + b * feature)`` on targets in [0, 1] (ties 0.5),
    by Newton's method with a tiny ridge so that separable data stays finite."""
    x = np.stack([np.ones_like(length_feature), length_feature], axis=1)
    theta = np.zeros(2)
    for _ in range(iterations):
        p = expit(x @ theta)
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
        return float(expit(a))  # a is far below -700 when length alone separates wins from losses

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
