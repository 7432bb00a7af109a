"""The synthetic corpus, the gold reward, Bradley-Terry labels and the oracle judge."""

import math
import random
from dataclasses import replace

import pytest

from gpo_core.task.corpus import CONNECTOR, CorpusSettings, make_documents, make_vocabulary
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


SENTENCES = CorpusSettings(attribute_words=60, min_words=30, max_words=50, min_salient=3, max_salient=5,
                           salient_repeats=(2, 3))  # fmt: skip
SENTENCE_VOCABULARY = make_vocabulary(0, SENTENCES)
SENTENCE_DOCUMENTS = make_documents(0, 200, "test", SENTENCE_VOCABULARY, SENTENCES)


def test_attributes_extend_the_vocabulary_without_changing_the_words_before_them() -> None:
    plain = make_vocabulary(0, replace(SENTENCES, attribute_words=0))
    assert (SENTENCE_VOCABULARY.topic, SENTENCE_VOCABULARY.filler) == (plain.topic, plain.filler)
    assert len(set(SENTENCE_VOCABULARY.words)) == len(SENTENCE_VOCABULARY.words)  # "and" is no generated word
    assert SENTENCE_VOCABULARY.words[-1] == CONNECTOR and len(SENTENCE_VOCABULARY.attributes) == 60


def test_documents_with_attributes_mention_each_topic_with_its_attribute() -> None:
    for doc in SENTENCE_DOCUMENTS:
        words = list(doc.words)
        assert SENTENCES.min_words <= len(words) and 3 <= len(doc.salient) <= 5
        for topic, attribute in doc.phrases:
            assert attribute == SENTENCE_VOCABULARY.attribute_of(topic)
            mentions = [i for i, w in enumerate(words) if w == topic]
            assert 2 <= len(mentions) <= 3 and all(words[i + 1] == attribute for i in mentions)
        for topic in doc.distractors:
            assert words.count(topic) == 1 and words[words.index(topic) + 1] == SENTENCE_VOCABULARY.attribute_of(topic)
        first = [words.index(w) for w in doc.salient]
        assert first == sorted(first)
        summary = doc.reference_summary.split()
        assert summary[2::3] == [CONNECTOR] * (len(doc.salient) - 1) and 8 <= len(summary) <= 14


def test_the_reward_of_a_sentence_by_hand() -> None:
    doc = next(d for d in SENTENCE_DOCUMENTS if len(d.salient) == 3 and len(set(d.attributes)) == 3)
    (t1, a1), (t2, _), (t3, a3) = doc.phrases
    assert gold_reward(doc, doc.reference_summary) == GOLD_OPTIMUM  # 8 words, "and" twice, allowed
    # 2 x F1 = 2 x 2 LCS / (|summary| + |reference|)
    # a phrase dropped: LCS 5 (t1 a1 and t3 a3) of a 5-word summary and the 8-word reference
    assert gold_reward(doc, f"{t1} {a1} and {t3} {a3}") == pytest.approx(4 * 5 / (5 + 8))
    # a wrong attribute: LCS 7 of 8 words each
    wrong = next(a for a in SENTENCE_VOCABULARY.attributes if a not in doc.attributes)
    assert gold_reward(doc, f"{t1} {a1} and {t2} {wrong} and {t3} {a3}") == pytest.approx(4 * 7 / (8 + 8))
    # a phrase repeated: LCS 8 of an 11-word summary
    assert gold_reward(doc, f"{doc.reference_summary} and {t1} {a1}") == pytest.approx(4 * 8 / (11 + 8))


def test_the_reward_is_twice_rouge_l_f1_computed_independently() -> None:
    rng = random.Random(0)
    for doc in DOCUMENTS[:50]:
        pool = list(doc.salient + doc.distractors) + list(VOCABULARY.filler[:5])
        for _ in range(20):
            words = rng.choices(pool, k=rng.randint(0, 7))
            salient = doc.salient
            common = _lcs_by_table(words, salient)
            precision, recall = (common / len(words), common / len(salient)) if common else (0.0, 0.0)
            by_hand = 2 * (2 * precision * recall / (precision + recall)) if common else 0.0
            assert gold_reward(doc, " ".join(words)) == pytest.approx(by_hand)


def _lcs_by_table(a, b) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


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
    # by hand: LCS 2 of a 3-word summary and a 3-word reference: 2 x F1 = 2 x 2/3
    assert gold_reward(doc, f"{a} {doc.distractors[0]} {c}") == pytest.approx(4 / 3)


def test_saying_less_never_beats_a_faithful_answer() -> None:
    """Each prefix of the reference summary scores below the next (a truncated answer loses to a
    faithful one) and nothing said scores 0; a wrong word costs a faithful answer something, not
    everything."""
    for doc in SENTENCE_DOCUMENTS[:50] + DOCUMENTS[:50]:
        words = doc.reference_summary.split()
        scores = [gold_reward(doc, " ".join(words[:k])) for k in range(len(words) + 1)]
        assert scores[0] == 0.0 and scores == sorted(scores) and len(set(scores)) == len(scores)
        assert scores[-1] == GOLD_OPTIMUM
        wrong = doc.distractors[0]
        padded = gold_reward(doc, " ".join([*words, wrong]))
        assert 0 < padded < GOLD_OPTIMUM


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
