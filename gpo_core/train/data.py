"""A run's data: read and tokenized once (training pairs, held-out pairs, trace prompts; a bad
dataset fails here, before any model is loaded), then served as length-grouped batches."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from gpo_core.conversation import ChatFormat, ConversationError, Prompt
from gpo_core.data import load_preferences, load_prompts
from gpo_core.models import is_encoder_decoder
from gpo_core.train.pairs import PairBatch, collate_pairs
from gpo_core.train.run import TrainingError
from gpo_core.train.spec import TrainingSpec


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


def endless_batches(pairs: TokenizedPairs, spec: TrainingSpec, rank: int, world_size: int) -> Iterator[list[int]]:
    """Endless micro-batches for this worker: epoch after epoch, workers taking turns."""
    epoch = 0
    while True:
        for i, batch in enumerate(length_grouped_batches(pairs, spec.batch_size, spec.seed, epoch)):
            if i % world_size == rank:
                yield batch
        epoch += 1


def total_steps(spec: TrainingSpec, n_pairs: int, world_size: int) -> int:
    if spec.steps is not None:
        return spec.steps
    per_step = spec.batch_size * spec.grad_accumulation * world_size
    assert spec.epochs is not None  # the spec gives exactly one of steps and epochs
    return max(1, math.ceil(spec.epochs * n_pairs / per_step))


@dataclass
class TrainingData:
    """The run's data, tokenized once: training pairs, held-out pairs, trace prompts."""

    tokenizer: PreTrainedTokenizerBase
    pairs: TokenizedPairs
    eval_pairs: TokenizedPairs | None
    trace_prompts: list[Prompt]
    encoder_decoder: bool
    # What tokenizing did to the data: pairs kept, prompts and responses cut to the length
    # limits, and pairs dropped because chosen and rejected became the same tokens.
    report: dict = field(default_factory=dict)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def load_training_data(spec: TrainingSpec) -> TrainingData:
    """Read and tokenize the data; a bad dataset fails here, before any model is loaded."""
    records = load_preferences(spec.dataset, columns=spec.dataset_columns, split=spec.dataset_split)
    eval_records = load_preferences(spec.eval_pairs, columns=spec.dataset_columns) if spec.eval_pairs else []
    trace_prompts = load_prompts(spec.eval_prompts)[: spec.trace_prompts] if spec.eval_prompts else []
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_path)
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"no usable tokenizer in {spec.tokenizer_path} ({str(err).splitlines()[0]}); set 'tokenizer' in the spec"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.chat_template:  # saved with every checkpoint: generation renders prompts the same way
        tokenizer.chat_template = spec.chat_template
    lengths = (spec.max_prompt_length, spec.max_response_length, spec.truncation_side)
    try:
        pairs = tokenize_pairs(records, tokenizer, *lengths)
        eval_pairs = tokenize_pairs(eval_records, tokenizer, *lengths) if eval_records else None
        ChatFormat(tokenizer).prompt_ids([p["prompt"] for p in trace_prompts[:1]])  # renders, or says why not
    except ConversationError as err:
        raise TrainingError(f"{spec.dataset}: {err}") from None
    identical = pairs.identical()
    if len(identical) == len(pairs):
        raise TrainingError(
            f"{spec.dataset}: in every pair the chosen and rejected responses are the same tokens once cut to "
            f"max_response_length={spec.max_response_length}: nothing to learn from; raise max_response_length"
        )
    eval_identical = eval_pairs.identical() if eval_pairs is not None else []
    if eval_pairs is not None and len(eval_identical) == len(eval_pairs):
        raise TrainingError(
            f"{spec.eval_pairs}: in every pair the chosen and rejected responses are the same "
            f"tokens once cut to max_response_length={spec.max_response_length}"
        )
    report = {
        "kind": "data",
        "pairs": len(pairs) - len(identical),
        "prompts_cut": pairs.prompts_cut,
        "responses_cut": pairs.responses_cut,
        "identical_dropped": len(identical),
        "eval_identical_dropped": len(eval_identical),
    }
    return TrainingData(
        tokenizer=tokenizer,
        pairs=pairs.without(identical),
        eval_pairs=eval_pairs.without(eval_identical) if eval_pairs is not None else None,
        trace_prompts=[p["prompt"] for p in trace_prompts],
        encoder_decoder=is_encoder_decoder(spec.policy),
        report=report,
    )
