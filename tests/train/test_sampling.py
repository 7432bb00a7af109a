"""The on-policy KL estimate's samples (the paper's Fig. 5): each response is scored exactly as it
was sampled, even when the pad token is one the model samples and the EOS is another token (a chat
model's ``<|endoftext|>`` pad and ``<|im_end|>`` EOS)."""

import copy
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpo_core.conversation import ChatFormat
from gpo_core.data import load_prompts
from gpo_core.generate import cut_at_stop, new_token_ids, stop_token_ids
from gpo_core.train.sampling import sample_and_score
from gpo_core.train.spec import TrainingOptions
from tests.support.chat_model import build_chat_model


def exact_logprob(model, prompt: list[int], response: list[int]) -> float:
    """log p(response | prompt), one unpadded sequence at a time: independent of the batched code."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    steps = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    return float(steps.gather(-1, torch.tensor(response)[:, None]).sum())


def test_cut_at_stop_keeps_sampled_pad_tokens() -> None:
    # pad id 0, EOS 5: a row without EOS ran to the end, and its zeros were sampled.
    assert cut_at_stop([[3, 0, 0, 4], [3, 5, 0, 0], [0, 0, 0, 0]], [5]) == [[3, 0, 0, 4], [3, 5], [0, 0, 0, 0]]
    assert cut_at_stop([[7, 9, 1]], [9, 1]) == [[7, 9]]  # the first of several stop tokens


@pytest.fixture(scope="module")
def chat_models(small_task, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kl")
    built = build_chat_model(small_task, folder, pairs=40)
    tokenizer = AutoTokenizer.from_pretrained(built["model"])
    policy = AutoModelForCausalLM.from_pretrained(built["model"]).eval()
    with torch.no_grad():
        policy.model.norm.weight.mul_(8.0)  # a peaked next-token distribution: some tokens recur
    reference = copy.deepcopy(policy)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    prompts = [p["prompt"] for p in load_prompts(built["prompts"])][:24]
    return tokenizer, policy, reference, prompts


def test_samples_are_scored_as_sampled_when_the_pad_token_is_sampled(chat_models) -> None:
    tokenizer, policy, reference, prompts = chat_models
    options = TrainingOptions(steps=1, trace_max_new_tokens=24)
    prompt_ids = ChatFormat(tokenizer).prompt_ids(prompts)
    stops = stop_token_ids(policy, tokenizer)
    assert tokenizer.pad_token_id not in stops

    # The pad token for this check: the ordinary token the policy samples most, so that it is
    # sampled inside responses (which the estimate must keep).
    torch.manual_seed(0)
    drawn = new_token_ids(policy, prompt_ids, tokenizer.pad_token_id, 1.0, 1.0, 24, stop_ids=stops)
    frequent = Counter(t for t in drawn.flatten().tolist() if t not in stops).most_common(1)[0][0]
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(frequent)

    torch.manual_seed(7)
    policy_lp, reference_lp = sample_and_score(policy, reference, tokenizer, prompts, options, torch.device("cpu"))
    torch.manual_seed(7)
    rows = new_token_ids(policy, prompt_ids, frequent, 1.0, 1.0, 24, stop_ids=stops).tolist()
    responses = cut_at_stop(rows, stops)
    assert sum(frequent in r for r in responses) >= 3  # the pad id was sampled inside responses

    for k, (prompt, response) in enumerate(zip(prompt_ids, responses, strict=True)):
        assert policy_lp[k].item() == pytest.approx(exact_logprob(policy, prompt, response), abs=1e-3)
        assert reference_lp[k].item() == pytest.approx(exact_logprob(reference, prompt, response), abs=1e-3)
