"""Tokenized preference data and length-grouped batches."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from gpo_core.train.pairs import PairBatch, collate_pairs


@dataclass
class TokenizedPairs:
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)

    def digest(self) -> str:
        """Content hash of the token ids: covers the data, the tokenizer and the truncation."""
        h = hashlib.sha256()
        for rows in (self.prompts, self.chosen, self.rejected):
            for row in rows:
                h.update(len(row).to_bytes(4, "little"))
                h.update(b"".join(t.to_bytes(4, "little") for t in row))
        return h.hexdigest()

    def batch(self, indices: Sequence[int], pad_id: int, encoder_decoder: bool) -> PairBatch:
        return collate_pairs(
            [self.prompts[i] for i in indices],
            [self.chosen[i] for i in indices],
            [self.rejected[i] for i in indices],
            pad_id,
            encoder_decoder,
        )


def tokenize_pairs(
    records: Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_length: int,
    max_response_length: int,
    truncation_side: str = "left",
) -> TokenizedPairs:
    """Prompts with the tokenizer's special tokens, cut to ``max_prompt_length`` from
    ``truncation_side``; responses without them, ``eos`` appended, cut at the end."""

    def truncate_prompt(ids: list[int]) -> list[int]:
        if len(ids) <= max_prompt_length:
            return ids
        return ids[-max_prompt_length:] if truncation_side == "left" else ids[:max_prompt_length]

    def responses(texts: list[str]) -> list[list[int]]:
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [[*ids, tokenizer.eos_token_id][:max_response_length] for ids in encoded]

    prompts = [truncate_prompt(ids) for ids in tokenizer([r["prompt"] for r in records])["input_ids"]]
    return TokenizedPairs(
        prompts, responses([r["chosen"] for r in records]), responses([r["rejected"] for r in records])
    )


def length_grouped_batches(
    pairs: TokenizedPairs, batch_size: int, seed: int, epoch: int, group: int = 32
) -> Iterator[list[int]]:
    """One epoch of batches: shuffle, sort within windows of ``group`` batches by length so that
    rows of a batch have similar lengths (little padding), then shuffle the batch order.

    The sort is by prompt length first: the prompt is the larger block and is processed once, so
    its padding costs most; response lengths break ties."""
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(pairs)))
    rng.shuffle(order)

    def length(i: int) -> tuple[int, int]:
        return len(pairs.prompts[i]), max(len(pairs.chosen[i]), len(pairs.rejected[i]))

    batches = []
    window = batch_size * group
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=length)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    yield from batches
