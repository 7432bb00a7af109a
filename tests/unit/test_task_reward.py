"""The synthetic corpus, the gold reward, Bradley-Terry labels and the oracle judge."""

import math
import random

import pytest

from gpo_core.task.corpus import CorpusSettings, make_documents, make_vocabulary
from gpo_core.task.reward import (
    GOLD_OPTIMUM,
    OracleJudge,
    bradley_terry_prefers_a,
    bradley_terry_probability,
    gold_reward,
)

VOCABULARY = make_vocabulary(0)
DOCUMENTS = make_documents(0, 200, "test", VOCABULARY)


def test_corpus_is_deterministic_and_splits_differ() -> None:
    again = make_documents(0, 200, "test", make_vocabulary(0))
    assert again == DOCUMENTS
    assert make_documents(0, 5, "other", VOCABULARY) != DOCUMENTS[:5]
    assert make_documents(1, 5, "test", make_vocabulary(1)) != DOCUMENTS[:5]


def test_documents_have_the_promised_shape() -> None:
    settings = CorpusSettings()
    for doc in DOCUMENTS:
        assert settings.min_words <= len(doc.words) <= settings.max_words + 1
        counts = {w: doc.words.count(w) for w in doc.salient + doc.distractors}
        assert all(counts[w] >= 2 for w in doc.salient)
        assert all(counts[w] == 1 for w in doc.distractors)
        first = [doc.words.index(w) for w in doc.salient]
        assert first == sorted(first)  # salient words listed in order of first appearance
        assert doc.prompt.startswith("POST: ") and doc.prompt.endswith(" TL;DR:")


def test_perfect_beats_partial_beats_wrong() -> None:
    for doc in DOCUMENTS:
        perfect = gold_reward(doc, doc.reference_summary)
        partial = gold_reward(doc, " ".join(doc.salient[:-1]))
        wrong = gold_reward(doc, " ".join(doc.distractors))
        assert perfect == GOLD_OPTIMUM
        assert perfect > partial > wrong


def test_reward_penalises_order_repetition_length_and_wrong_words() -> None:
    doc = next(d for d in DOCUMENTS if len(d.salient) == 3)
    a, b, c = doc.salient
    best = gold_reward(doc, f"{a} {b} {c}")
    assert gold_reward(doc, f"{b} {a} {c}") < best  # order matters (LCS)
    assert gold_reward(doc, f"{a} {b} {c} {c}") < best  # repetition
    assert gold_reward(doc, f"{a} {b} {c} {doc.distractors[0]}") < best  # wrong word
    assert gold_reward(doc, f"{a} {b} {c} </s> junk junk") == best  # text after end-of-sequence is ignored
    assert gold_reward(doc, "") == 0.0
    # by hand: LCS 2 of 3 -> 4/3, one wrong word -0.5, no extra length
    assert gold_reward(doc, f"{a} {doc.distractors[0]} {c}") == pytest.approx(2 * 2 / 3 - 0.5)


def test_bradley_terry_label_statistics() -> None:
    """Empirical win frequency at each reward gap matches sigmoid(gap / T) within 4 standard errors."""
    rng = random.Random(0)
    temperature, draws = 0.5, 4000
    for gap in (-1.0, -0.25, 0.0, 0.4, 1.5):
        p = 1 / (1 + math.exp(-gap / temperature))
        assert bradley_terry_probability(gap, 0.0, temperature) == pytest.approx(p)
        wins = sum(bradley_terry_prefers_a(rng, gap, 0.0, temperature) for _ in range(draws))
        assert abs(wins / draws - p) < 4 * math.sqrt(p * (1 - p) / draws)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        bradley_terry_probability(1.0, 0.0, 0.0)


def test_oracle_judge_modes() -> None:
    doc = DOCUMENTS[0]
    deterministic = OracleJudge("deterministic")
    assert deterministic.judge(doc, doc.reference_summary, doc.distractors[0]) == "a"
    assert deterministic.judge(doc, doc.distractors[0], doc.reference_summary) == "b"
    assert deterministic.judge(doc, doc.reference_summary, doc.reference_summary) == "tie"
    sampled = OracleJudge("sampled", temperature=0.5, seed=1)
    verdicts = [sampled.judge(doc, doc.reference_summary, " ".join(doc.salient[:-1])) for _ in range(2000)]
    gap = GOLD_OPTIMUM - gold_reward(doc, " ".join(doc.salient[:-1]))
    p = 1 / (1 + math.exp(-gap / 0.5))
    assert abs(verdicts.count("a") / 2000 - p) < 4 * math.sqrt(p * (1 - p) / 2000)
    assert "tie" not in verdicts
    with pytest.raises(ValueError, match="mode must be"):
        OracleJudge("random")
