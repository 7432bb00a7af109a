"""Sequence log-probabilities ``log pi(response | prompt)`` from transformers models.

The sum runs over response tokens only: prompt tokens and padding are masked out. Works for causal
LMs (prompt and response concatenated, left or right padding) and encoder-decoder models (prompt
to the encoder, response as decoder labels). Any model whose forward returns ``.logits`` works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class CausalBatch:
    """Prompt+response rows for a causal LM; ``response_mask`` marks the tokens to score."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T], 1 on response tokens


@dataclass
class Seq2SeqBatch:
    """Prompts for the encoder and responses as decoder labels."""

    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    labels: torch.Tensor  # [B, T], pad positions hold any valid id
    labels_mask: torch.Tensor  # [B, T], 1 on response tokens


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``: the rows padded with ``pad_id`` to one length on the ``left`` or ``right``."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        start = length - len(row) if side == "left" else 0
        ids[i, start : start + len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, start : start + len(row)] = 1
    return ids, mask


def _check_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for i, response in enumerate(responses):
        if len(response) == 0:
            raise ValueError(f"row {i}: the response is empty; there is nothing to score")


def collate_causal(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    padding_side: str = "right",
) -> CausalBatch:
    """Concatenate each prompt with its response and pad the batch to one length."""
    _check_rows(prompts, responses)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [[*p, *r] for p, r in zip(prompts, responses, strict=True)]
    ids, attention = pad_rows(rows, pad_token_id, padding_side)
    scored, _ = pad_rows(
        [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses, strict=True)], 0, padding_side
    )
    return CausalBatch(ids, attention, scored)


def collate_seq2seq(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_token_id: int
) -> Seq2SeqBatch:
    """Right-pad prompts (encoder) and responses (decoder labels) separately."""
    _check_rows(prompts, responses)
    input_ids, attention_mask = pad_rows(prompts, pad_token_id, "right")
    labels, labels_mask = pad_rows(responses, pad_token_id, "right")
    return Seq2SeqBatch(input_ids, attention_mask, labels, labels_mask)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` without materialising the full log-softmax.

    Half-precision logits are upcast to float32 first: a sum of hundreds of bf16 log-probs
    would otherwise lose the differences that rho measures.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def causal_sequence_logprobs(model: torch.nn.Module, batch: CausalBatch) -> torch.Tensor:
    """``sum_t log pi(y_t | x, y_<t)`` over response tokens, one value per row: shape [B]."""
    attention = batch.attention_mask
    # Positions count real tokens only, so left padding gives the same result as right padding.
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=attention, position_ids=position_ids).logits
    # logits at t predict token t+1
    per_token = token_logprobs(logits[:, :-1], batch.input_ids[:, 1:])
    return (per_token * batch.response_mask[:, 1:]).sum(-1)


def seq2seq_sequence_logprobs(model: torch.nn.Module, batch: Seq2SeqBatch) -> torch.Tensor:
    """``sum_t log pi(y_t | x, y_<t)`` for an encoder-decoder model: shape [B]."""
    labels = batch.labels.masked_fill(batch.labels_mask == 0, -100)
    # Teacher forcing: the decoder sees the labels shifted right (start token first). Passing
    # decoder_input_ids instead of labels spares the model a cross-entropy we would not use.
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=batch.labels_mask,
    ).logits
    per_token = token_logprobs(logits, batch.labels)
    return (per_token * batch.labels_mask).sum(-1)


def sequence_logprobs(model: torch.nn.Module, batch: CausalBatch | Seq2SeqBatch) -> torch.Tensor:
    """Dispatch on the batch kind."""
    if isinstance(batch, Seq2SeqBatch):
        return seq2seq_sequence_logprobs(model, batch)
    return causal_sequence_logprobs(model, batch)
