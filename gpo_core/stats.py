"""Win rates with honest uncertainty: ties count one half, and the 95% interval is a bootstrap
over prompts (several comparisons of one prompt are not independent evidence)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass(frozen=True)
class WinRate:
    rate: float
    low: float  # 95% bootstrap interval
    high: float
    prompts: int
    comparisons: int
    wins: int
    ties: int
    losses: int

    def to_dict(self) -> dict:
        return asdict(self)


def win_rate(outcomes_per_prompt: Sequence[Sequence[str]], resamples: int = 10_000, seed: int = 0) -> WinRate:
    """``outcomes_per_prompt[i]``: the outcomes ("win", "tie", "loss") of prompt i's comparisons."""
    if not outcomes_per_prompt or any(len(o) == 0 for o in outcomes_per_prompt):
        raise ValueError("every prompt needs at least one comparison")
    flat = [o for outcomes in outcomes_per_prompt for o in outcomes]
    unknown = set(flat) - OUTCOME_SCORE.keys()
    if unknown:
        raise ValueError(f"unknown outcomes {sorted(unknown)}; use win, tie or loss")
    scores = np.array([sum(OUTCOME_SCORE[o] for o in outcomes) for outcomes in outcomes_per_prompt])
    counts = np.array([len(outcomes) for outcomes in outcomes_per_prompt])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(scores), size=(resamples, len(scores)))
    boot = scores[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return WinRate(
        rate=float(scores.sum() / counts.sum()),
        low=float(low),
        high=float(high),
        prompts=len(scores),
        comparisons=len(flat),
        wins=flat.count("win"),
        ties=flat.count("tie"),
        losses=flat.count("loss"),
    )
