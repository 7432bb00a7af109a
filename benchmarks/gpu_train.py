"""GPO training throughput and model FLOPs utilization (MFU) of our loop on one GPU.

    python benchmarks/gpu_train.py [--steps 30] [--batch 16] [--precision bf16] [--json OUT.json]

A 1.1B-parameter Llama in TinyLlama's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads,
intermediate 5632, vocabulary 32000) with random weights, synthetic pairs with prompts of 256 and
responses of 128 tokens (every row the same length: no padding), logistic loss. The loop is
``gpo_core.train.loop.train`` in this process (``RunContext`` on the GPU), as a sweep's run with
``workers: 0`` trains. The reference pass and model loading happen before the first step and are
not timed; the step time is the wall time between the loop's step records, the first 5 steps
skipped (the loop's own tokens/s figure is printed beside it).

MFU counts the model FLOPs of the tokens processed (each prompt once, both responses), in
PaLM's way: 6 x (parameters without the input embedding) + 12 x layers x hidden x context per
token, against the dense bf16 peak of the device (a small table; unknown devices get no MFU).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}

SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}


class TimedSink:
    """Keeps the records, each stamped with the wall clock when the loop emitted it."""

    def __init__(self):
        self.records: list[dict] = []

    def emit(self, record: dict) -> None:
        self.records.append({**record, "wall": time.perf_counter()})

    def close(self) -> None:
        pass


def peak_flops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16.items() if key in device_name), None)


def prepare(folder: Path, pairs: int, prompt_tokens: int, response_tokens: int, seed: int = 0) -> int:
    """A random-weight model folder with a word-level tokenizer, and ``pairs`` pairs as JSONL.
    Returns the parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpo_core.data import write_jsonl
    from gpo_core.task.tokenizer import word_level_tokenizer

    vocab = SHAPE["vocab_size"]
    tokenizer = word_level_tokenizer([f"w{i}" for i in range(vocab - 4)], prepend_bos=False)
    torch.manual_seed(seed)
    config = LlamaConfig(
        **SHAPE, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(vocab - 4)}" for _ in range(n))

    # The response's final token is the EOS the tokenizer of the loop appends.
    rows = [
        {
            "prompt": text(prompt_tokens),
            "chosen": " " + text(response_tokens - 1),
            "rejected": " " + text(response_tokens - 1),
        }
        for _ in range(pairs)
    ]
    write_jsonl(folder / "pairs.jsonl", rows)
    parameters = sum(p.numel() for p in model.parameters())
    (folder / "parameters.txt").write_text(str(parameters))
    return parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16", "bf16-pure"], default="bf16")
    parser.add_argument(
        "--strategy", choices=["none", "fsdp"], default="none",
        help="fsdp: one Ray Train worker with FSDP2 (the sharded path, on one GPU); none: in this process.",
    )  # fmt: skip
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"], help="Fewer for a quick check.")
    parser.add_argument("--label", default="ours", help="Name of this row in the output.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument(
        "--workdir", type=Path, help="Keep the model and data here and reuse them (default: a temporary folder)."
    )
    args = parser.parse_args()
    SHAPE["num_hidden_layers"] = args.layers

    from gpo_core.train.loop import train
    from gpo_core.train.run import RunContext
    from gpo_core.train.spec import TrainingSpec

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.workdir or Path(scratch)
        started = time.perf_counter()
        shape = "-".join(
            str(v) for v in (*SHAPE.values(), args.batch * args.steps, args.prompt_tokens, args.response_tokens)
        )
        if not (folder / shape / "pairs.jsonl").exists():
            prepare(folder / shape, args.batch * args.steps, args.prompt_tokens, args.response_tokens)
        parameters = int((folder / shape / "parameters.txt").read_text())
        prepared = time.perf_counter() - started
        spec = TrainingSpec(
            policy=str(folder / shape / "model"), dataset=str(folder / shape / "pairs.jsonl"),
            output_dir=f"{scratch}/run", cache_dir=f"{scratch}/cache", loss="logistic", beta=0.1, lr=1e-6,
            batch_size=args.batch, steps=args.steps, precision=args.precision, max_prompt_length=4096,
            max_response_length=4096,
        )  # fmt: skip
        sink = TimedSink()
        torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
        started = time.perf_counter()
        if args.strategy == "fsdp":
            from gpo_core.train.ray_runner import train_on_ray

            sharded = spec.model_copy(update={"workers": 1, "strategy": "fsdp", "use_gpu": device.type == "cuda"})
            train_on_ray(sharded, Path(scratch) / "metrics.jsonl")
            # The worker's records carry no wall stamps of this process: its own step times stand in.
            for record in map(json.loads, (Path(scratch) / "metrics.jsonl").read_text().splitlines()):
                sink.records.append(record)
        else:
            train(spec, sink, RunContext(device=device))
        total = time.perf_counter() - started
    steps = [r for r in sink.records if r["kind"] == "step"]
    timed = steps[5:] if len(steps) > 10 else steps
    tokens_per_step = args.batch * (args.prompt_tokens + 2 * args.response_tokens)
    # Wall time between the loop's step records: every step ends in a host-device sync, so in
    # steady state this is the true step time, whatever the loop measures itself.
    if "wall" in timed[0]:
        wall_step_s = (timed[-1]["wall"] - timed[0]["wall"]) / (len(timed) - 1)
    else:  # a Ray worker's records: the loop's own step time (it ends each step with a host sync)
        wall_step_s = statistics.median(tokens_per_step / r["tokens_per_s"] for r in timed)
    tokens_per_s = tokens_per_step / wall_step_s
    embedding = SHAPE["vocab_size"] * SHAPE["hidden_size"]
    context = args.prompt_tokens + args.response_tokens
    flops_per_token = 6 * (parameters - embedding) + 12 * SHAPE["num_hidden_layers"] * SHAPE["hidden_size"] * context
    peak = peak_flops(name)
    result = {
        "label": args.label,
        "device": name,
        "parameters": parameters,
        "precision": args.precision,
        "strategy": args.strategy,
        "batch_pairs": args.batch,
        "tokens_per_step": tokens_per_step,
        "steps": len(steps),
        "tokens_per_s": round(tokens_per_s),
        "step_s": round(wall_step_s, 4),
        "loop_reported_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in timed)),
        "model_tflops_per_s": round(tokens_per_s * flops_per_token / 1e12, 1),
        "mfu": round(tokens_per_s * flops_per_token / peak, 4) if peak else None,
        "peak_memory_gib": round(max(r.get("peak_memory_gib", 0) for r in steps), 1),  # the worker's own
        "prepare_s": round(prepared, 1),
        "train_call_s": round(total, 1),
        "final_loss": steps[-1]["loss"],
        "command": " ".join(["python", *sys.argv]),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
