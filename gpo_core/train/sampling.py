"""Samples of pi_theta on evaluation prompts, scored under pi_theta and pi_ref: the data of the
on-policy KL(pi_theta || pi_ref) estimate (the paper's Fig. 5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from gpo_core.conversation import ChatFormat, Prompt
from gpo_core.generate import cut_at_stop, new_token_ids, stop_token_ids
from gpo_core.logprobs import collate_causal, collate_seq2seq, sequence_logprobs
from gpo_core.models import is_encoder_decoder


@torch.no_grad()
def sample_and_score(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[Prompt],
    spec,
    device: torch.device,
    reference_scope: Callable[[], AbstractContextManager] = nullcontext,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one response per prompt from the policy at temperature 1 (no top-k/top-p, so the
    samples follow pi_theta exactly) and return (log pi_theta, log pi_ref) of each. Responses
    cut by ``trace_max_new_tokens`` (default ``max_response_length``) are scored as the prefixes
    they are; every response is scored exactly as sampled, up to its stop token (see
    :func:`cut_at_stop`)."""
    encoder_decoder = is_encoder_decoder(policy)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(policy, tokenizer)
    limit = spec.trace_max_new_tokens or spec.max_response_length
    policy_lp, reference_lp = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        prompt_ids = [ids[-spec.max_prompt_length :] for ids in ChatFormat(tokenizer).prompt_ids(chunk)]
        new = new_token_ids(policy, prompt_ids, pad, 1.0, 1.0, limit, stop_ids=stops)
        responses = cut_at_stop(new.tolist(), stops)
        collated = (
            collate_seq2seq(prompt_ids, responses, pad)
            if encoder_decoder
            else collate_causal(prompt_ids, responses, pad)
        )
        collated = type(collated)(*(t.to(device) for t in vars(collated).values()))
        policy_lp.append(sequence_logprobs(policy, collated, spec.logprob_chunk).float().cpu())
        with reference_scope():  # LoRA: the same model with its adapters switched off
            reference_lp.append(sequence_logprobs(reference, collated, spec.logprob_chunk).float().cpu())
    return torch.cat(policy_lp), torch.cat(reference_lp)
