"""Training throughput: our GPO trainer against TRL's DPOTrainer, side by side on the CPU.

    pip install -e ".[bench]"          # TRL
    python benchmarks/train_throughput.py [--repetitions 3] [--steps 50]

The same tiny Llama (hidden 256, intermediate 688, 4 layers, 4 heads, vocab 4096, ~5.3M
parameters, fp32) and the same 512 synthetic pairs (prompts 60-130 tokens, responses 13-48),
batch 8, logistic/sigmoid loss, same beta and learning rate. Each trainer runs in its own
process (so its peak RSS is its own), alternating: ours, TRL defaults, TRL fastest
(precompute_ref_log_probs=True, gradient_checkpointing=False), repeated. Timed: from the trainer's
construction to the end of training, so tokenization and reference log-probs are included on both
sides (ours from an empty cache every time, so no reuse). Ours also loads the model and the data
file inside that time; TRL's are loaded before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB, PAIRS, BATCH, BETA, LR = 4096, 512, 8, 0.1, 5e-6


def prepare(folder: Path, seed: int = 0) -> None:
    """Model folder (random init, with a word-level tokenizer) and the pairs as JSONL."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpo_core.data import write_jsonl
    from gpo_core.task.tokenizer import word_level_tokenizer

    tokenizer = word_level_tokenizer([f"w{i}" for i in range(VOCAB - 4)], prepend_bos=False)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(f"w{rng.randrange(VOCAB - 4)}" for _ in range(rng.randint(low, high)))

    # Responses start with a space so that prompt + response tokenizes as prompt, then response.
    rows = [
        {"prompt": text(60, 130), "chosen": " " + text(12, 47), "rejected": " " + text(12, 47)} for _ in range(PAIRS)
    ]
    write_jsonl(folder / "pairs.jsonl", rows)
    (folder / "parameters.txt").write_text(str(sum(p.numel() for p in model.parameters())))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(folder: Path, steps: int) -> dict:
    from gpo_core.train.loop import train
    from gpo_core.train.metrics import ListSink
    from gpo_core.train.spec import TrainingSpec

    with tempfile.TemporaryDirectory() as scratch:
        spec = TrainingSpec(
            policy=str(folder / "model"), dataset=str(folder / "pairs.jsonl"), output_dir=f"{scratch}/run",
            cache_dir=f"{scratch}/cache", loss="logistic", beta=BETA, lr=LR, batch_size=BATCH, steps=steps,
            max_prompt_length=1024, max_response_length=1024, log_every=1000,
        )  # fmt: skip
        started = time.perf_counter()
        result = train(spec, ListSink())
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": result.steps, "padded_fraction": result.padded_fraction}


def run_trl(folder: Path, steps: int, fastest: bool) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    model = AutoModelForCausalLM.from_pretrained(folder / "model")
    dataset = load_dataset("json", data_files=str(folder / "pairs.jsonl"), split="train")
    extra = {"precompute_ref_log_probs": True, "gradient_checkpointing": False} if fastest else {}
    with tempfile.TemporaryDirectory() as scratch:
        config = DPOConfig(
            output_dir=scratch, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR, beta=BETA,
            loss_type="sigmoid", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
            logging_steps=1000, max_length=None, dataloader_num_workers=0, disable_tqdm=True, **extra,
        )  # fmt: skip
        # TRL tokenizes and, with precompute_ref_log_probs, computes the reference log-probs in the
        # constructor: time it with the training, as ours does both inside train().
        started = time.perf_counter()
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": steps}


def worker(name: str, folder: Path, steps: int) -> None:
    import torch

    torch.manual_seed(0)
    result = run_ours(folder, steps) if name == "ours" else run_trl(folder, steps, fastest=name == "trl_fastest")
    result["pairs_per_s"] = steps * BATCH / result["seconds"]
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--worker", choices=["ours", "trl_default", "trl_fastest"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.folder, args.steps)
        return

    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is not installed: pip install -e '.[bench]'")
    names = ["ours", "trl_default", "trl_fastest"]
    results: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        prepare(folder)
        print(f"model: {int((folder / 'parameters.txt').read_text()) / 1e6:.2f}M parameters; {PAIRS} pairs; "
              f"batch {BATCH}; {args.steps} steps; load before: {load_average()}", flush=True)  # fmt: skip
        for repetition in range(args.repetitions):
            for name in names:
                command = [sys.executable, __file__, "--worker", name, "--folder", str(folder)]
                command += ["--steps", str(args.steps)]
                env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if done.returncode != 0 or line is None:
                    sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
                result = json.loads(line.removeprefix("RESULT "))
                results[name].append(result)
                print(f"repetition {repetition + 1} {name:>12}: {result['pairs_per_s']:7.2f} pairs/s, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip

    median = {name: statistics.median(r["pairs_per_s"] for r in runs) for name, runs in results.items()}
    rss = {name: max(r["peak_rss_mb"] for r in runs) for name, runs in results.items()}
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load after: {load_average()}")
    for name in names:
        print(f"{name:>12}: median {median[name]:7.2f} pairs/s, peak RSS {rss[name]:.0f} MB")
    print(f"ours / TRL default: {median['ours'] / median['trl_default']:.2f}x")
    print(f"ours / TRL fastest: {median['ours'] / median['trl_fastest']:.2f}x")
    print(f"command: python benchmarks/train_throughput.py --repetitions {args.repetitions} --steps {args.steps}")


if __name__ == "__main__":
    main()
