"""Synthetic documents shaped like TL;DR posts.

A document is a sequence of words from a seeded synthetic vocabulary. A few *topic* words are
salient: each appears several times, and a good summary names them in the order they first
appear. Other topic words appear once (distractors): naming them is wrong. Filler words make up
the rest. The reference summary is the salient words in order: short and specific, like a TL;DR.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

PROMPT_PREFIX = "POST:"
PROMPT_SUFFIX = "TL;DR:"
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "tr", "pl"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]


@dataclass(frozen=True)
class CorpusSettings:
    topic_words: int = 120
    filler_words: int = 240
    min_words: int = 40
    max_words: int = 120
    min_salient: int = 2
    max_salient: int = 4
    salient_repeats: tuple[int, int] = (2, 4)  # each salient word appears this many times (inclusive)
    distractors: tuple[int, int] = (1, 3)  # topic words that appear exactly once


@dataclass(frozen=True)
class Vocabulary:
    topic: tuple[str, ...]
    filler: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return self.topic + self.filler


@dataclass(frozen=True)
class Document:
    id: str
    words: tuple[str, ...]
    salient: tuple[str, ...]  # in order of first appearance
    distractors: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return f"{PROMPT_PREFIX} {' '.join(self.words)} {PROMPT_SUFFIX}"

    @property
    def reference_summary(self) -> str:
        return " ".join(self.salient)

    def to_dict(self) -> dict:
        return asdict(self)


def make_vocabulary(seed: int, settings: CorpusSettings = CorpusSettings()) -> Vocabulary:
    """Distinct pronounceable words (two or three syllables), split into topic and filler."""
    rng = random.Random(f"vocabulary-{seed}")
    needed = settings.topic_words + settings.filler_words
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < needed:
        syllables = rng.choice((2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return Vocabulary(tuple(words[: settings.topic_words]), tuple(words[settings.topic_words :]))


def make_document(
    rng: random.Random, vocabulary: Vocabulary, doc_id: str, settings: CorpusSettings = CorpusSettings()
) -> Document:
    length = rng.randint(settings.min_words, settings.max_words)
    n_salient = rng.randint(settings.min_salient, settings.max_salient)
    n_distractors = rng.randint(*settings.distractors)
    topics = rng.sample(vocabulary.topic, n_salient + n_distractors)
    salient, distractors = topics[:n_salient], topics[n_salient:]
    mentions = [w for w in salient for _ in range(rng.randint(*settings.salient_repeats))] + distractors
    words = [rng.choice(vocabulary.filler) for _ in range(max(0, length - len(mentions)))]
    # Insert mentions at random positions; then read the salient order off the text.
    for word in mentions:
        words.insert(rng.randint(0, len(words)), word)
    first_seen = {w: words.index(w) for w in salient}
    ordered = tuple(sorted(salient, key=first_seen.__getitem__))
    return Document(doc_id, tuple(words), ordered, tuple(distractors))


def make_documents(
    seed: int, count: int, split: str, vocabulary: Vocabulary, settings: CorpusSettings = CorpusSettings()
) -> list[Document]:
    """``count`` documents of one split; splits draw from independent streams of the same seed."""
    rng = random.Random(f"documents-{seed}-{split}")
    return [make_document(rng, vocabulary, f"{split}-{i:06d}", settings) for i in range(count)]
