"""Tiny policies for the built-in task: a Llama (served by vLLM) and a T5 (the paper's family),
trained from scratch by supervised fine-tuning on noisy reference summaries, and sampled with
transformers ``generate``."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from gpo_core.logprobs import Seq2SeqBatch, collate_causal, collate_seq2seq, sequence_logprobs
from gpo_core.models import is_encoder_decoder
from gpo_core.task.corpus import CONNECTOR, Document, Vocabulary

MAX_SUMMARY_TOKENS = 12


@dataclass(frozen=True)
class ModelSettings:
    architecture: str = "llama"  # "llama" (causal) or "t5" (encoder-decoder)
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 480


def make_model(settings: ModelSettings, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    common = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if settings.architecture == "llama":
        config = LlamaConfig(
            hidden_size=settings.hidden,
            intermediate_size=settings.intermediate,
            num_hidden_layers=settings.layers,
            num_attention_heads=settings.heads,
            num_key_value_heads=settings.heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **common,
        )
        return LlamaForCausalLM(config)
    if settings.architecture == "t5":
        t5 = T5Config(
            d_model=settings.hidden,
            d_kv=settings.hidden // settings.heads,
            d_ff=settings.intermediate,
            num_layers=settings.layers,
            num_decoder_layers=settings.layers,
            num_heads=settings.heads,
            feed_forward_proj="gated-gelu",
            **common,
        )
        # Generic config fields T5Config's signature does not list (it takes them as extra keywords).
        t5.decoder_start_token_id = tokenizer.pad_token_id
        t5.tie_word_embeddings = True
        return T5ForConditionalGeneration(t5)
    raise ValueError(f"architecture must be 'llama' or 't5', got {settings.architecture!r}")


def noisy_summary(
    rng: random.Random, document: Document, vocabulary: Vocabulary, noise: float, max_corruptions: int = 1
) -> str:
    """The reference summary, corrupted with probability ``noise`` in one of the ways a weak
    annotator would: a phrase (a word, or a topic and its attribute) dropped, two swapped, a
    distractor or a filler word added, a repeat, or (with attributes) a wrong attribute. Up to
    ``max_corruptions``, each with probability ``noise`` given the one before."""
    phrases = [list(phrase) for phrase in document.phrases]
    kinds = ["drop", "swap", "distractor", "filler", "repeat"] + (["attribute"] if document.attributes else [])
    for _ in range(max_corruptions):
        if rng.random() >= noise:
            break
        kind = rng.choice(kinds)
        if kind == "drop" and len(phrases) > 1:
            phrases.pop(rng.randrange(len(phrases)))
        elif kind == "swap" and len(phrases) > 1:
            i = rng.randrange(len(phrases) - 1)
            phrases[i], phrases[i + 1] = phrases[i + 1], phrases[i]
        elif kind == "distractor":
            if document.attributes:
                distractor = rng.choice(document.distractors)
                phrases.insert(rng.randint(0, len(phrases)), [distractor, vocabulary.attribute_of(distractor)])
            else:
                phrases.insert(rng.randint(0, len(phrases)), [rng.choice(document.distractors)])
        elif kind == "filler":
            phrases.insert(rng.randint(0, len(phrases)), [rng.choice(vocabulary.filler)])
        elif kind == "attribute":
            phrase = rng.choice(phrases)
            phrase[-1] = rng.choice(vocabulary.attributes)
        else:  # a repeat (or a drop or swap of a lone phrase)
            phrases.insert(rng.randint(0, len(phrases)), list(rng.choice(phrases)))
    joiner = f" {CONNECTOR} " if document.attributes else " "
    return joiner.join(" ".join(phrase) for phrase in phrases)


def encode_pairs(
    tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], responses: Sequence[str]
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids (with ``<s>``) and response ids (with ``</s>`` appended)."""
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    response_ids = [
        [*ids, tokenizer.eos_token_id] for ids in tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    ]
    return prompt_ids, response_ids


def sft_loss(model: PreTrainedModel, prompt_ids, response_ids, pad_id: int) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens; the prompt is context only."""
    batch = (
        collate_seq2seq(prompt_ids, response_ids, pad_id)
        if is_encoder_decoder(model)
        else collate_causal(prompt_ids, response_ids, pad_id)
    )
    tokens = batch.labels_mask.sum() if isinstance(batch, Seq2SeqBatch) else batch.response_mask.sum()
    return -sequence_logprobs(model, batch).sum() / tokens


@dataclass(frozen=True)
class SFTSettings:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 30
    noise: float = 0.5
    max_corruptions: int = 1  # a summary of phrases can take several (see noisy_summary)
    seed: int = 0


def supervised_finetune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    documents: Sequence[Document],
    vocabulary: Vocabulary,
    settings: SFTSettings,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Next-token loss on the summary tokens (the document is context), AdamW with a cosine schedule;
    fresh noise is drawn every time a document is revisited. Returns the loss curve."""
    rng = random.Random(f"sft-{settings.seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        progress_fraction = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_fraction))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses = []
    for step in range(settings.steps):
        batch_docs = rng.sample(list(documents), min(settings.batch_size, len(documents)))
        prompts = [d.prompt for d in batch_docs]
        targets = [noisy_summary(rng, d, vocabulary, settings.noise, settings.max_corruptions) for d in batch_docs]
        prompt_ids, response_ids = encode_pairs(tokenizer, prompts, targets)
        loss = sft_loss(model, prompt_ids, response_ids, tokenizer.pad_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, losses[-1])
    model.eval()
    return losses


def parameter_count(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())
