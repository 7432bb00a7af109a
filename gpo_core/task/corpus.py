"""Synthetic documents shaped like TL;DR posts.

A document is a sequence of words from a seeded synthetic vocabulary. A few *topic* words are
salient: each appears several times, and a good summary names them in the order they first
appear. Other topic words appear once (distractors): naming them is wrong. Filler words make up
the rest. The reference summary is the salient words in order: short and specific, like a TL;DR.

With ``attribute_words`` (the ``paper`` size), every topic word has its attribute, a word of a
fixed lexicon that follows each of its mentions ("zapo kibo"); the reference summary is then a
sentence of phrases, "zapo kibo and mefi tula and ...": 8 to 14 words for 3 to 5 salient topics.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

PROMPT_PREFIX = "POST:"
PROMPT_SUFFIX = "TL;DR:"
CONNECTOR = "and"  # joins the phrases of a summary with attributes (no generated word has a vowel onset)
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
    attribute_words: int = 0  # > 0: each topic mention is "topic attribute", summaries are sentences


@dataclass(frozen=True)
class Vocabulary:
    topic: tuple[str, ...]
    filler: tuple[str, ...]
    attributes: tuple[str, ...] = ()

    @property
    def words(self) -> tuple[str, ...]:
        return self.topic + self.filler + self.attributes + ((CONNECTOR,) if self.attributes else ())

    def attribute_of(self, topic: str) -> str:
        """The lexicon: each topic word's attribute (topics share the attributes round-robin)."""
        return self.attributes[self.topic.index(topic) % len(self.attributes)]


@dataclass(frozen=True)
class Document:
    id: str
    words: tuple[str, ...]
    salient: tuple[str, ...]  # in order of first appearance
    distractors: tuple[str, ...]
    attributes: tuple[str, ...] = ()  # the salient topics' attributes, in the same order (or none)

    @property
    def prompt(self) -> str:
        return f"{PROMPT_PREFIX} {' '.join(self.words)} {PROMPT_SUFFIX}"

    @property
    def reference_summary(self) -> str:
        if self.attributes:
            return f" {CONNECTOR} ".join(f"{t} {a}" for t, a in zip(self.salient, self.attributes, strict=True))
        return " ".join(self.salient)

    @property
    def reference_words(self) -> tuple[str, ...]:
        return tuple(self.reference_summary.split())

    @property
    def phrases(self) -> list[tuple[str, ...]]:
        """The reference summary's units: each salient topic, with its attribute if it has one."""
        if self.attributes:
            return list(zip(self.salient, self.attributes, strict=True))
        return [(t,) for t in self.salient]

    def to_dict(self) -> dict:
        return asdict(self)


def make_vocabulary(seed: int, settings: CorpusSettings = CorpusSettings()) -> Vocabulary:
    """Distinct pronounceable words (two or three syllables), split into topic and filler."""
    rng = random.Random(f"vocabulary-{seed}")
    needed = settings.topic_words + settings.filler_words + settings.attribute_words
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < needed:
        syllables = rng.choice((2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    topic_end, filler_end = settings.topic_words, settings.topic_words + settings.filler_words
    return Vocabulary(tuple(words[:topic_end]), tuple(words[topic_end:filler_end]), tuple(words[filler_end:]))


def make_document(
    rng: random.Random, vocabulary: Vocabulary, doc_id: str, settings: CorpusSettings = CorpusSettings()
) -> Document:
    length = rng.randint(settings.min_words, settings.max_words)
    n_salient = rng.randint(settings.min_salient, settings.max_salient)
    n_distractors = rng.randint(*settings.distractors)
    topics = rng.sample(vocabulary.topic, n_salient + n_distractors)
    salient, distractors = topics[:n_salient], topics[n_salient:]
    if vocabulary.attributes:
        return _document_with_attributes(rng, vocabulary, doc_id, settings, length, salient, distractors)
    mentions = [w for w in salient for _ in range(rng.randint(*settings.salient_repeats))] + distractors
    words = [rng.choice(vocabulary.filler) for _ in range(max(0, length - len(mentions)))]
    # Insert mentions at random positions; then read the salient order off the text.
    for word in mentions:
        words.insert(rng.randint(0, len(words)), word)
    first_seen = {w: words.index(w) for w in salient}
    ordered = tuple(sorted(salient, key=first_seen.__getitem__))
    return Document(doc_id, tuple(words), ordered, tuple(distractors))


def _document_with_attributes(
    rng: random.Random,
    vocabulary: Vocabulary,
    doc_id: str,
    settings: CorpusSettings,
    length: int,
    salient: list[str],
    distractors: list[str],
) -> Document:
    """Mentions are two-word phrases "topic attribute", inserted between filler words so that no
    phrase is split."""
    mentions = [w for w in salient for _ in range(rng.randint(*settings.salient_repeats))] + distractors
    units: list[tuple[str, ...]] = [(rng.choice(vocabulary.filler),) for _ in range(max(0, length - 2 * len(mentions)))]
    for word in mentions:
        units.insert(rng.randint(0, len(units)), (word, vocabulary.attribute_of(word)))
    words = [w for unit in units for w in unit]
    first_seen = {w: words.index(w) for w in salient}
    ordered = tuple(sorted(salient, key=first_seen.__getitem__))
    return Document(doc_id, tuple(words), ordered, tuple(distractors), tuple(map(vocabulary.attribute_of, ordered)))


def make_documents(
    seed: int, count: int, split: str, vocabulary: Vocabulary, settings: CorpusSettings = CorpusSettings()
) -> list[Document]:
    """``count`` documents of one split; splits draw from independent streams of the same seed."""
    rng = random.Random(f"documents-{seed}-{split}")
    return [make_document(rng, vocabulary, f"{split}-{i:06d}", settings) for i in range(count)]
