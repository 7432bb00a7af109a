"""Sequence log-probs of real (tiny, randomly initialised) transformers models, batched and padded,
against an independent per-example computation without padding."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from gpo_core.logprobs import collate_causal, collate_seq2seq, sequence_logprobs

PAD = 0
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [3]]
RESPONSES = [[20, 21], [22, 23, 24, 25], [26], [27, 28, 29]]


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD,
    )  # fmt: skip
    return LlamaForCausalLM(config).double().eval()


@pytest.fixture(scope="module")
def t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=1,
    )  # fmt: skip
    return T5ForConditionalGeneration(config).double().eval()


def causal_reference(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """One unpadded row: sum of log p(response token | everything before it)."""
    ids = torch.tensor([prompt + response])
    log_probs = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    return sum(log_probs[len(prompt) + i - 1, token] for i, token in enumerate(response))


def seq2seq_reference(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    decoder_input = torch.tensor([[model.config.decoder_start_token_id, *response[:-1]]])
    logits = model(input_ids=torch.tensor([prompt]), decoder_input_ids=decoder_input).logits[0]
    log_probs = torch.log_softmax(logits, -1)
    return sum(log_probs[i, token] for i, token in enumerate(response))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_causal_matches_per_example_values_and_gradients(llama, padding_side: str) -> None:
    batch = collate_causal(PROMPTS, RESPONSES, PAD, padding_side=padding_side)
    batched = sequence_logprobs(llama, batch)
    weights = torch.linspace(0.5, 2.0, len(PROMPTS), dtype=torch.float64)
    (batched_grad,) = torch.autograd.grad((weights * batched).sum(), llama.model.embed_tokens.weight)

    expected = torch.stack([causal_reference(llama, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    (expected_grad,) = torch.autograd.grad((weights * expected).sum(), llama.model.embed_tokens.weight)
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(batched_grad, expected_grad, rtol=0, atol=1e-9)


def test_causal_masks_prompt_and_padding(llama) -> None:
    batch = collate_causal(PROMPTS, RESPONSES, PAD)
    assert batch.response_mask.sum(-1).tolist() == [len(r) for r in RESPONSES]
    assert (batch.response_mask <= batch.attention_mask).all()
    # Changing a prompt token changes the score only through conditioning, never by being scored:
    # scoring an empty-prompt row gives the plain LM likelihood of the response.
    lone = sequence_logprobs(llama, collate_causal([[2]], [[20, 21]], PAD))
    torch.testing.assert_close(lone[0], causal_reference(llama, [2], [20, 21]))


def test_seq2seq_matches_per_example_values_and_gradients(t5) -> None:
    batch = collate_seq2seq(PROMPTS, RESPONSES, PAD)
    batched = sequence_logprobs(t5, batch)
    (batched_grad,) = torch.autograd.grad(batched.sum(), t5.shared.weight)
    expected = torch.stack([seq2seq_reference(t5, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    (expected_grad,) = torch.autograd.grad(expected.sum(), t5.shared.weight)
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(batched_grad, expected_grad, rtol=0, atol=1e-9)


def test_bad_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="row 1: the response is empty"):
        collate_causal([[1], [2]], [[3], []], PAD)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        collate_seq2seq([[1], [2]], [[3]], PAD)
