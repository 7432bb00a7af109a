"""The shared-prompt forward equals the naive concatenated forward: values and gradients."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from gpo_core.preference import preference_loss
from gpo_core.train.pairs import collate_pairs, pair_logprobs, pair_logprobs_naive

PAD = 0
PROMPTS = [[1, 5, 6, 7, 8], [1, 9], [1, 10, 11, 12, 13, 14, 15], [1, 3, 4]]
CHOSEN = [[20, 21, 2], [22, 23, 24, 25, 2], [26, 2], [27, 28, 29, 2]]
REJECTED = [[30, 2], [31, 32, 2], [33, 34, 35, 36, 37, 2], [38, 2]]


def llama(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD,
    )  # fmt: skip
    return LlamaForCausalLM(config).to(dtype)


def t5(dtype: torch.dtype) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=2, dropout_rate=0.0,
    )  # fmt: skip
    return T5ForConditionalGeneration(config).to(dtype)


def loss_and_grads(model, batch, forward) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    chosen, rejected = forward(model, batch)
    reference = torch.zeros_like(chosen)
    loss = preference_loss(chosen, rejected, reference - 1.0, reference, beta=0.5, f="logistic").loss
    loss.backward()
    return torch.cat([chosen, rejected]).detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("make", [llama, t5], ids=["causal", "seq2seq"])
def test_shared_prompt_equals_naive(make, dtype: torch.dtype) -> None:
    model = make(dtype).train()
    batch = collate_pairs(PROMPTS, CHOSEN, REJECTED, PAD, encoder_decoder=model.config.is_encoder_decoder)
    shared_values, shared_grads = loss_and_grads(model, batch, pair_logprobs)
    naive_values, naive_grads = loss_and_grads(model, batch, pair_logprobs_naive)
    # Within 1e-5 as promised; float64 is tighter but not exact, since transformers computes some
    # position and mask terms in float32 whichever dtype the weights have.
    tolerance = 1e-6 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(shared_values, naive_values, rtol=0, atol=tolerance * 10)
    assert len(shared_grads) == len(naive_grads) > 0
    for a, b in zip(shared_grads, naive_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance)


def test_pair_batch_accounting() -> None:
    batch = collate_pairs(PROMPTS, CHOSEN, REJECTED, PAD)
    assert batch.size == 4
    real = sum(map(len, PROMPTS)) + sum(map(len, CHOSEN)) + sum(map(len, REJECTED))
    assert batch.tokens() == real
    total = batch.prompt_ids.numel() + batch.responses.numel()
    assert batch.padded_fraction() == pytest.approx(1 - real / total)
    with pytest.raises(ValueError, match="a response is empty"):
        collate_pairs([[1]], [[]], [[2]], PAD)
