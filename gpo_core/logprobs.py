"""Sequence log-probabilities ``log pi(response | prompt)`` from transformers models.

The sum runs over response tokens only: prompt tokens and padding are masked out. Works for causal
LMs (prompt and response concatenated, left or right padding) and encoder-decoder models (prompt
to the encoder, response as decoder labels). The logits come from the model's last hidden states
through its output head, at the scored positions only, and optionally a chunk of positions at a
time (:func:`scored_logprob_sums`): a 150k-token vocabulary never needs the whole batch's logits.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel


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


class OutputHead:
    """The model's last step from hidden states to logits, applied only where a token is scored.

    Covers the heads of the transformers families: the output projection, T5's rescaling of the
    decoder output, BART's logits bias, Cohere's logit scale, Granite's logits divisor and Gemma's
    soft-capping. :func:`output_head` checks it against the model's own logits before first use, so
    a head that does something else is an error, never a silently wrong log-prob.
    """

    def __init__(self, model: PreTrainedModel):
        config = model.config
        self.projection = model.get_output_embeddings()
        if self.projection is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings: it is not a language model")
        scaled = getattr(config, "scale_decoder_outputs", False)  # T5: hidden * d_model ** -0.5
        self.input_scale = float(getattr(config, "d_model", 1.0)) ** -0.5 if scaled else None
        self.bias = getattr(model, "final_logits_bias", None)
        scale = getattr(config, "logit_scale", None)
        divisor = getattr(config, "logits_scaling", None)
        self.output_scale = (scale or 1.0) / (divisor or 1.0)
        self.softcap = getattr(config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            hidden = hidden * self.input_scale
        logits = self.projection(hidden)
        if self.bias is not None:
            logits = logits + self.bias.to(logits.dtype)
        if self.output_scale != 1.0:
            logits = logits * self.output_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


_HEADS: weakref.WeakKeyDictionary[torch.nn.Module, OutputHead] = weakref.WeakKeyDictionary()


def output_head(model: PreTrainedModel) -> OutputHead:
    """The model's :class:`OutputHead`, checked once per model against its own forward on a few
    tokens (in eval mode, so dropout does not differ)."""
    head = _HEADS.get(model)
    if head is not None:
        return head
    head = OutputHead(model)
    ids = torch.arange(3, device=model.device).remainder(model.config.vocab_size)[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if getattr(model.config, "is_encoder_decoder", False):
                start = model.config.decoder_start_token_id or 0
                decoder_ids = torch.full_like(ids, start)
                expected = model(input_ids=ids, decoder_input_ids=decoder_ids).logits
                encoded = model.get_encoder()(input_ids=ids).last_hidden_state
                hidden = model.get_decoder()(input_ids=decoder_ids, encoder_hidden_states=encoded).last_hidden_state
            else:
                expected = model(input_ids=ids).logits
                hidden = model.base_model(input_ids=ids).last_hidden_state
            got = head(hidden)
    finally:
        model.train(was_training)
    if not torch.allclose(got.float(), expected.float(), rtol=1e-3, atol=1e-3):
        difference = float((got.float() - expected.float()).abs().max())
        raise ValueError(
            f"{type(model).__name__}: its logits are not its output embeddings applied to its last hidden state "
            f"(max difference {difference:.3g}); gpo cannot score this model family's responses"
        )
    _HEADS[model] = head
    return head


def scored_logprob_sums(
    head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """``sum_t mask[b, t] * log softmax(head(hidden[b, t]))[targets[b, t]]`` per row: shape [B].

    Logits are computed only at the masked positions (padding costs nothing). With ``chunk``, at
    most that many positions' logits exist at once, forward and backward: each chunk is
    recomputed in the backward pass (activation checkpointing of the head alone), so a batch
    never holds its full [tokens, vocabulary] logits, the largest tensor of a model with a big
    vocabulary. Without it, one chunk of all positions.
    """
    rows, positions = mask.nonzero(as_tuple=True)
    selected, wanted = hidden[rows, positions], targets[rows, positions]
    step = chunk or max(1, len(rows))
    recompute = chunk is not None and torch.is_grad_enabled()
    parts = []
    for start in range(0, len(rows), step):
        part = (selected[start : start + step], wanted[start : start + step])
        if recompute:
            parts.append(checkpoint(_head_logprobs, head, *part, use_reentrant=False))
        else:
            parts.append(_head_logprobs(head, *part))
    per_token = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(hidden.shape[0], dtype=per_token.dtype, device=hidden.device)
    return sums.index_add(0, rows, per_token)


def _head_logprobs(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return token_logprobs(head(hidden), targets)


def causal_sequence_logprobs(model: PreTrainedModel, batch: CausalBatch, chunk: int | None = None) -> torch.Tensor:
    """``sum_t log pi(y_t | x, y_<t)`` over response tokens, one value per row: shape [B]."""
    attention = batch.attention_mask
    # Positions count real tokens only, so left padding gives the same result as right padding.
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=batch.input_ids, attention_mask=attention, position_ids=position_ids)
    # the hidden state at t predicts token t+1
    return scored_logprob_sums(
        output_head(model), hidden.last_hidden_state[:, :-1], batch.input_ids[:, 1:], batch.response_mask[:, 1:], chunk
    )


def seq2seq_sequence_logprobs(model: PreTrainedModel, batch: Seq2SeqBatch, chunk: int | None = None) -> torch.Tensor:
    """``sum_t log pi(y_t | x, y_<t)`` for an encoder-decoder model: shape [B]."""
    encoded = model.get_encoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    hidden = decoder_hidden(model, encoded.last_hidden_state, batch.attention_mask, batch.labels, batch.labels_mask)
    return scored_logprob_sums(output_head(model), hidden, batch.labels, batch.labels_mask, chunk)


def decoder_hidden(
    model: PreTrainedModel,
    encoded: torch.Tensor,
    encoder_mask: torch.Tensor,
    labels: torch.Tensor,
    labels_mask: torch.Tensor,
) -> torch.Tensor:
    """The decoder's last hidden states under teacher forcing: it reads the labels shifted right
    (start token first) and attends to the encoded prompt."""
    # Declared by encoder-decoder models only (PreTrainedModel does not): looked up by name.
    shift_right: Callable[..., torch.Tensor] = getattr(model, "prepare_decoder_input_ids_from_labels")  # noqa: B009
    decoder_input_ids = shift_right(labels=labels.masked_fill(labels_mask == 0, -100))
    return model.get_decoder()(
        input_ids=decoder_input_ids,
        attention_mask=labels_mask,
        encoder_hidden_states=encoded,
        encoder_attention_mask=encoder_mask,
        use_cache=False,  # one pass over the whole response: nothing to cache for
    ).last_hidden_state


def sequence_logprobs(
    model: PreTrainedModel, batch: CausalBatch | Seq2SeqBatch, chunk: int | None = None
) -> torch.Tensor:
    """Dispatch on the batch kind; ``chunk`` bounds the logits held at once (:func:`scored_logprob_sums`)."""
    if isinstance(batch, Seq2SeqBatch):
        return seq2seq_sequence_logprobs(model, batch, chunk)
    return causal_sequence_logprobs(model, batch, chunk)
