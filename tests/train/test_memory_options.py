"""The memory options of the pair forward: chunked log-probs (the same values and gradients as one
chunk, and never the whole batch's logits) and gradient checkpointing (the same values and
gradients, fewer activations kept)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from gpo_core.logprobs import output_head
from gpo_core.preference import preference_loss
from gpo_core.train.pairs import collate_pairs, enable_gradient_checkpointing, pair_logprobs, pair_logprobs_naive

PAD = 0
VOCAB = 4096


def pairs(rows: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)

    def row(length: int) -> list[int]:
        return torch.randint(3, VOCAB, (length,), generator=generator).tolist()

    prompts = [row(3 + 2 * i) for i in range(rows)]
    chosen = [row(18 + i) for i in range(rows)]
    rejected = [row(22 - i) for i in range(rows)]
    return prompts, chosen, rejected


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, pad_token_id=PAD,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
        pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=2, dropout_rate=0.0,
    )  # fmt: skip
    return T5ForConditionalGeneration(config)


def loss_and_grads(model, batch, forward, chunk):
    model.zero_grad()
    chosen, rejected = forward(model, batch, chunk)
    loss = preference_loss(chosen, rejected, chosen.detach() - 1.0, rejected.detach(), beta=0.5, f="logistic").loss
    loss.backward()
    return torch.cat([chosen, rejected]).detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("forward", [pair_logprobs, pair_logprobs_naive], ids=["shared", "naive"])
@pytest.mark.parametrize("make", [llama, t5], ids=["causal", "seq2seq"])
def test_chunks_give_the_values_and_gradients_of_one_chunk(make, forward) -> None:
    model = make().train()
    batch = collate_pairs(*pairs(), PAD, encoder_decoder=model.config.is_encoder_decoder)
    whole_values, whole_grads = loss_and_grads(model, batch, forward, None)
    for chunk in (1, 7, 10_000):  # one position, a size that divides nothing, more than there are
        values, grads = loss_and_grads(model, batch, forward, chunk)
        torch.testing.assert_close(values, whole_values, rtol=1e-6, atol=1e-5)
        assert len(grads) == len(whole_grads) > 0
        for a, b in zip(grads, whole_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation returns."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
        return out


def largest_tensor(model, batch, chunk) -> int:
    with LargestTensor() as mode:
        chosen, rejected = pair_logprobs(model, batch, chunk)
        (chosen - rejected).sum().backward()
    return mode.numel


def saved_for_backward(model, batch, chunk) -> int:
    """Elements the forward keeps for the backward pass (what stays alive between the two)."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        pair_logprobs(model, batch, chunk)
    return saved


def test_a_chunk_never_holds_the_batchs_logits_forward_or_backward() -> None:
    model = llama().train()
    output_head(model)  # its check runs a tiny forward; not what is measured
    batch = collate_pairs(*pairs(rows=6), PAD)
    logits = int(batch.response_mask.sum()) * VOCAB  # the batch's [scored tokens, vocabulary]
    # One chunk: the logits exist at once. Chunks of 16 positions: no tensor is larger than one
    # chunk's logits, and none of them is kept for the backward pass (the rest of what is kept,
    # the transformer's activations, is the same either way).
    assert largest_tensor(model, batch, None) >= logits
    assert largest_tensor(model, batch, 16) <= 16 * VOCAB < logits / 8
    assert saved_for_backward(model, batch, None) - saved_for_backward(model, batch, 16) >= logits


class DoubledLogits(LlamaForCausalLM):
    """A model family whose head does more than its output projection."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


def test_a_head_other_than_the_projection_is_refused_not_scored_wrongly() -> None:
    model = DoubledLogits(llama().config)
    batch = collate_pairs(*pairs(rows=1), PAD)
    with pytest.raises(ValueError, match="DoubledLogits: its logits are not its output embeddings"):
        pair_logprobs(model, batch)


@pytest.mark.parametrize("forward", [pair_logprobs, pair_logprobs_naive], ids=["shared", "naive"])
@pytest.mark.parametrize("make", [llama, t5], ids=["causal", "seq2seq"])
def test_gradient_checkpointing_gives_the_same_values_and_gradients(make, forward) -> None:
    plain, checkpointed = make().train(), make().train()
    enable_gradient_checkpointing(checkpointed)
    batch = collate_pairs(*pairs(), PAD, encoder_decoder=plain.config.is_encoder_decoder)
    plain_values, plain_grads = loss_and_grads(plain, batch, forward, None)
    for chunk in (None, 7):  # the two memory options together, too
        values, grads = loss_and_grads(checkpointed, batch, forward, chunk)
        torch.testing.assert_close(values, plain_values, rtol=1e-6, atol=1e-5)
        assert len(grads) == len(plain_grads) > 0
        for a, b in zip(grads, plain_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("make", [llama, t5], ids=["causal", "seq2seq"])
def test_gradient_checkpointing_keeps_fewer_activations_for_the_backward_pass(make) -> None:
    plain, checkpointed = make().train(), make().train()
    enable_gradient_checkpointing(checkpointed)
    batch = collate_pairs(*pairs(), PAD, encoder_decoder=plain.config.is_encoder_decoder)
    assert saved_for_backward(checkpointed, batch, 16) < saved_for_backward(plain, batch, 16) / 2
