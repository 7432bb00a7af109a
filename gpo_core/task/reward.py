"""The gold reward r*(document, summary), Bradley-Terry labels and the oracle judge.

r* = 2 * LCS(summary, reference) / |reference|   coverage of the reference summary, in order
     - 0.5 * (words not in the reference)         wrong words: distractors or anything else
     - 0.5 * (repeated words)                     a word more often than the reference has it
     - 0.1 * max(0, |summary| - |reference|)      length beyond what is needed

The reference summary (the salient words in order; with attributes, the sentence of "topic
attribute" phrases) scores the optimum, 2.0, on every document; missing a word or swapping two costs
coverage; padding a summary with anything costs more.
"""

from __future__ import annotations

import math
import random
from collections import Counter
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
    allowed = Counter(reference)
    coverage = GOLD_OPTIMUM * _lcs(words, reference) / len(reference)
    wrong = sum(1 for w in words if w not in allowed)
    # Each word beyond its count in the reference (at least one); a summary of distinct salient
    # words allows each once, a sentence allows its connector between every two phrases.
    repeats = sum(max(0, n - max(1, allowed[w])) for w, n in Counter(words).items())
    too_long = max(0, len(words) - len(reference))
    return coverage - 0.5 * wrong - 0.5 * repeats - 0.1 * too_long


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

    def __init__(self, mode: Literal["deterministic", "sampled"] = "deterministic", temperature: float = 0.5, seed=0):
        if mode not in ("deterministic", "sampled"):
            raise ValueError(f"oracle judge mode must be 'deterministic' or 'sampled', got {mode!r}")
        self.mode = mode
        self.temperature = temperature
        self._rng = random.Random(seed)

    def judge(self, document: Document, summary_a: str, summary_b: str) -> Verdict:
        ra, rb = gold_reward(document, summary_a), gold_reward(document, summary_b)
        if self.mode == "deterministic":
            return "a" if ra > rb else "b" if rb > ra else "tie"
        return "a" if bradley_terry_prefers_a(self._rng, ra, rb, self.temperature) else "b"
