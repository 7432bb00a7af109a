"""A user's own chat model and conversational data, built here (nothing can be downloaded): a
tiny random Qwen2-shaped causal LM (hidden 64, 2 layers, 4 heads: head_dim 16) with a byte-level
BPE tokenizer trained on the data, ChatML special tokens and Qwen2's chat template; and the
built-in task's pairs rewritten in TRL's conversational format."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from gpo_core.data import load_preferences, load_prompts, write_jsonl

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bpe_tokenizer(
    texts: list[str], vocab_size: int = 400, chat_template: str | None = CHATML
) -> PreTrainedTokenizerFast:
    """Byte-level BPE as Qwen2's: no BOS, eos <|im_end|> (the instruct models'), pad <|endoftext|>."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=chat_template
    )
    return tokenizer


def conversational(record: dict) -> dict:
    """A built-in task pair in TRL's conversational format (explicit prompt)."""
    return {
        "prompt": [{"role": "user", "content": "Summarize this post.\n\n" + record["prompt"]}],
        "chosen": [{"role": "assistant", "content": record["chosen"].strip()}],
        "rejected": [{"role": "assistant", "content": record["rejected"].strip()}],
    }


def build_chat_model(task, folder: Path, pairs: int = 200, hidden: int = 64) -> dict[str, Path]:
    """The model folder and conversational pairs and prompts, from the built-in task's text
    (``hidden`` 64: head_dim 16, which vLLM on CPUs cannot serve; 128: head_dim 32, which it can)."""
    records = load_preferences(task.artifacts.train_pairs)[:pairs]
    prompts = load_prompts(task.artifacts.eval_prompts)
    texts = [r[k] for r in records for k in ("prompt", "chosen", "rejected")] + ["Summarize this post."]
    tokenizer = bpe_tokenizer(texts)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model_dir = folder / "qwen2-tiny"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    pairs_path = write_jsonl(folder / "pairs.jsonl", [conversational(r) for r in records])
    prompts_path = write_jsonl(
        folder / "prompts.jsonl",
        [{"id": p["id"], "prompt": conversational({**p, "chosen": "", "rejected": ""})["prompt"]} for p in prompts],
    )
    return {"model": model_dir, "pairs": pairs_path, "prompts": prompts_path}
