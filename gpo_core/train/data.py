"""Tokenized preference data and length-grouped batches."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from gpo_core.conversation import ChatFormat
from gpo_core.train.pairs import PairBatch, collate_pairs


@dataclass
class TokenizedPairs:
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    prompts_cut: int = 0  # prompts longer than max_prompt_length (cut)
    responses_cut: int = 0  # chosen or rejected responses longer than max_response_length (cut)

    def __len__(self) -> int:
        return len(self.prompts)

    def identical(self) -> list[int]:
        """Pairs whose chosen and rejected tokens are equal: rho is 0 whatever the policy, so they
        carry no signal (often two responses that differ only past max_response_length)."""
        return [i for i, (c, r) in enumerate(zip(self.chosen, self.rejected, strict=True)) if c == r]

    def without(self, drop: list[int]) -> TokenizedPairs:
        gone = set(drop)
        keep = [i for i in range(len(self)) if i not in gone]
        return TokenizedPairs(
            [self.prompts[i] for i in keep],
            [self.chosen[i] for i in keep],
            [self.rejected[i] for i in keep],
            self.prompts_cut,
            self.responses_cut,
        )

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
    """Prompts and responses as :class:`gpo_core.conversation.ChatFormat` makes them (a text
    prompt with the tokenizer's special tokens, a conversation through the chat template; a
    response ending in ``eos``); prompts cut to ``max_prompt_length`` from ``truncation_side``,
    responses cut at the end."""

    def truncate_prompt(ids: list[int]) -> list[int]:
        if len(ids) <= max_prompt_length:
            return ids
        return ids[-max_prompt_length:] if truncation_side == "left" else ids[:max_prompt_length]

    chat = ChatFormat(tokenizer)
    raw_prompts = [r["prompt"] for r in records]
    prompts = chat.prompt_ids(raw_prompts)
    chosen = chat.response_ids(raw_prompts, [r["chosen"] for r in records])
    rejected = chat.response_ids(raw_prompts, [r["rejected"] for r in records])
    return TokenizedPairs(
        [truncate_prompt(ids) for ids in prompts],
        [ids[:max_response_length] for ids in chosen],
        [ids[:max_response_length] for ids in rejected],
        prompts_cut=sum(len(ids) > max_prompt_length for ids in prompts),
        responses_cut=sum(len(ids) > max_response_length for ids in chosen + rejected),
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
