"""The gold reward r*(document, summary), Bradley-Terry labels and the oracle judge.

r* = 2 * ROUGE-L F1(summary, reference) = 2 * 2 * LCS(summary, reference) / (|summary| + |reference|)

LCS is the longest common subsequence of words: the reference summary's words (the salient words
in order; with attributes, the sentence of "topic attribute" phrases) covered in order. The F1 of
that coverage (recall, LCS / |reference|) and of the summary's own words being right (precision,
LCS / |summary|) scores the reference itself at the optimum, 2.0, on every document, and nothing
said at 0. Wrong, repeated, out-of-order and surplus words cost precision; missing words cost
recall. A word is worth adding when it is right with a chance above F / 2, so a policy cannot gain
by saying less unless what it drops was mostly wrong: an empty or truncated answer cannot beat a
faithful one.

(Until format 3 the reward was 2 * LCS / |reference| - 0.5 per wrong or repeated word - 0.1 per
surplus word: a wrong word cost more than a covered one gained, so dropping words was the cheapest
gain, an empty answer scored above most of pi_ref's samples on the paper task (56%), and the
reproduction's best runs won by brevity.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Literal

from gpo_core.task.corpus import Document

GOLD_OPTIMUM = 2.0
_EOS_MARKERS = ("</s>",)


def summary_words(text: str) -> list[str]:
    words = text.split()
    for marker in _EOS_MARKERS:
        if marker in words:
            words = words[: words.index(marker)]
    return words


def _lcs(a: list[str], b: tuple[str, ...]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            current = row[j]
            row[j] = previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
            previous_diagonal = current
    return row[-1]


def gold_reward(document: Document, summary: str) -> float:
    words = summary_words(summary)
    reference = document.reference_words
    common = _lcs(words, reference)
    return GOLD_OPTIMUM * 2 * common / (len(words) + len(reference)) if common else 0.0


def bradley_terry_probability(reward_a: float, reward_b: float, temperature: float) -> float:
    """P(a preferred to b) = sigmoid((r_a - r_b) / temperature)."""
    if not temperature > 0:
        raise ValueError(f"the Bradley-Terry temperature must be > 0, got {temperature}")
    z = (reward_a - reward_b) / temperature
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def bradley_terry_prefers_a(rng: random.Random, reward_a: float, reward_b: float, temperature: float) -> bool:
    return rng.random() < bradley_terry_probability(reward_a, reward_b, temperature)


Verdict = Literal["a", "b", "tie"]


class OracleJudge:
    """Side-by-side verdicts from the gold reward.

    ``deterministic``: the higher reward wins, equal rewards tie. ``sampled``: a Bradley-Terry draw
    at ``temperature`` (never a tie), seeded, like a noisy human rater.
    """

    def __init__(
        self,
        mode: Literal["deterministic", "sampled"] = "deterministic",
        temperature: float = 0.5,
        seed=0,
        reward: Callable[[Document, str], float] | None = None,
    ):
        """``reward``: what it judges by; default the gold reward (another: the labeler's proxy)."""
        if mode not in ("deterministic", "sampled"):
            raise ValueError(f"oracle judge mode must be 'deterministic' or 'sampled', got {mode!r}")
        self.mode = mode
        self.reward = reward or gold_reward
        self.temperature = temperature
        self._rng = random.Random(seed)

    def judge(self, document: Document, summary_a: str, summary_b: str) -> Verdict:
        ra, rb = self.reward(document, summary_a), self.reward(document, summary_b)
        if self.mode == "deterministic":
            return "a" if ra > rb else "b" if rb > ra else "tie"
        return "a" if bradley_terry_prefers_a(self._rng, ra, rb, self.temperature) else "b"
