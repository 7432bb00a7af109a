"""Training memory: our trainer against TRL's DPOTrainer, and FSDP against DDP, side by side.

    python benchmarks/train_memory.py [--steps 2] [--pairs 8] [--only CASE ...]

A Qwen2-0.5B-shaped model with random weights (hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, vocabulary 151,936, tied embeddings, attention biases: 494M parameters; built
as a Llama, since transformers gives a folder with a Qwen2 config its Qwen2 tokenizer, which
cannot read the synthetic word-level one), pairs of a 256-token
prompt and two 128-token responses (the last token the EOS both trainers append), batch 2, a
logistic (sigmoid) loss, a few steps. Each case runs in a fresh process and reports its peak RSS
(the process's high-water mark, Python and torch included, which is what a worker needs): both
trainers load the model, compute the reference log-probs from an empty cache and train.

Cases:
  ours-fp32, ours-bf16 (mixed), ours-bf16-pure, and each "-lean" (logprob_chunk 128, gradient
  checkpointing); ours-fp32-lora (LoRA r 16 on every linear layer but the head);
  trl-fp32 / trl-bf16: DPOTrainer with its defaults (a reference copy of the model in memory;
  bf16: autocast); "-lowest": its lowest-memory documented options that run on a CPU
  (precompute_ref_log_probs, gradient_checkpointing; padding_free is unavailable in TRL 1.16 and
  Liger kernels need a GPU); trl-bf16-lowest also loads the model in bf16.
  ddp-2 / fsdp-2: two Ray Train workers, bf16-pure lean, warm reference cache: the peak of the
  main worker's process (its step records' peak_memory_gib).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, tie_word_embeddings=True, attention_bias=True, max_position_embeddings=1024,
)  # fmt: skip
PROMPT, RESPONSE, BATCH, WORDS = 256, 128, 2, 4000
OURS = {
    "ours-fp32": {"precision": "fp32"},
    "ours-fp32-lean": {"precision": "fp32", "logprob_chunk": 128, "gradient_checkpointing": True},
    "ours-bf16": {"precision": "bf16"},
    "ours-bf16-pure": {"precision": "bf16-pure"},
    "ours-bf16-pure-lean": {"precision": "bf16-pure", "logprob_chunk": 128, "gradient_checkpointing": True},
    "ours-fp32-lora": {"precision": "fp32", "lora": {"r": 16, "alpha": 32}},
}
TRL = {
    "trl-fp32": {},
    "trl-fp32-lowest": {"precompute_ref_log_probs": True, "gradient_checkpointing": True},
    "trl-bf16": {"bf16": True},
    "trl-bf16-lowest": {"bf16": True, "precompute_ref_log_probs": True, "gradient_checkpointing": True},
}
RAY = {"ddp-2": "ddp", "fsdp-2": "fsdp"}
GIB = 2**30


def prepare(folder: Path, pairs: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpo_core.data import write_jsonl
    from gpo_core.task.tokenizer import word_level_tokenizer

    tokenizer = word_level_tokenizer([f"w{i}" for i in range(WORDS)], prepend_bos=False)
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(n))

    rows = [{"prompt": text(PROMPT), "chosen": " " + text(RESPONSE - 1), "rejected": " " + text(RESPONSE - 1)}
            for _ in range(pairs)]  # fmt: skip
    write_jsonl(folder / "pairs.jsonl", rows)


def spec(folder: Path, name: str, steps: int, **options):
    from gpo_core.train.spec import TrainingSpec

    options = {"cache_dir": str(folder / "cache" / name), **options}  # a case's own cache unless it shares one
    return TrainingSpec(
        policy=str(folder / "model"), dataset=str(folder / "pairs.jsonl"), output_dir=str(folder / "runs" / name),
        loss="logistic", beta=0.1, lr=1e-5, batch_size=BATCH, steps=steps, max_prompt_length=PROMPT,
        max_response_length=RESPONSE, **options,
    )  # fmt: skip


def run_ours(folder: Path, name: str, steps: int) -> dict:
    from gpo_core.train.loop import train
    from gpo_core.train.metrics import ListSink

    train(spec(folder, name, steps, **OURS[name]), ListSink())
    return {}


def run_trl(folder: Path, name: str, steps: int) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    options = dict(TRL[name])
    dtype = torch.bfloat16 if name == "trl-bf16-lowest" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=dtype)
    dataset = load_dataset("json", data_files=str(folder / "pairs.jsonl"), split="train")
    with tempfile.TemporaryDirectory() as scratch:
        config = DPOConfig(
            output_dir=scratch, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=1e-5, beta=0.1,
            loss_type="sigmoid", use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000,
            max_length=None, dataloader_num_workers=0, disable_tqdm=True, **{"bf16": False, **options},
        )  # fmt: skip
        DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer).train()
    return {}


def run_ray(folder: Path, name: str, steps: int) -> dict:
    from gpo_core.train.loop import train
    from gpo_core.train.metrics import ListSink
    from gpo_core.train.ray_runner import ensure_ray, train_on_ray

    options = {**OURS["ours-bf16-pure-lean"], "cache_dir": str(folder / "cache" / "ray")}
    warm = spec(folder, f"{name}-warm", 1, **options)
    train(warm, ListSink())  # fills the reference cache: the workers then only train
    ensure_ray()
    metrics = folder / "runs" / f"{name}.jsonl"
    train_on_ray(spec(folder, name, steps, workers=2, strategy=RAY[name], **options), metrics)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {"worker_peak_gib": max(r["peak_memory_gib"] for r in records if r["kind"] == "step")}


def case(folder: Path, name: str, steps: int) -> None:
    started = time.perf_counter()
    runner = run_ours if name in OURS else run_trl if name in TRL else run_ray
    extra = runner(folder, name, steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    print(
        json.dumps(
            {"case": name, "peak_rss_gib": round(peak, 2), "seconds": round(time.perf_counter() - started), **extra}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--only", nargs="*", help="Run only these cases.")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        case(args.workdir, args.case, args.steps)
        return
    names = args.only or [*OURS, *TRL, *RAY]
    with tempfile.TemporaryDirectory(prefix="gpo-memory-") as scratch:
        folder = Path(scratch)
        prepare(folder, args.pairs)
        results = {}
        for name in names:
            command = [sys.executable, __file__, "--case", name, "--workdir", str(folder), "--steps", str(args.steps)]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr[-2000:]}", flush=True)
                continue
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(results[name]), flush=True)
    print(f"\n$ python benchmarks/train_memory.py --steps {args.steps} --pairs {args.pairs}")
    print("| case | peak RSS (GiB) | seconds |\n|---|---|---|")
    for name, result in results.items():
        peak = result.get("worker_peak_gib", result["peak_rss_gib"])
        print(f"| {name} | {peak:.2f} | {result['seconds']} |")

    def ratio(a: str, b: str) -> None:
        if a in results and b in results:
            pa = results[a].get("worker_peak_gib", results[a]["peak_rss_gib"])
            pb = results[b].get("worker_peak_gib", results[b]["peak_rss_gib"])
            print(f"{a} / {b}: {pa / pb:.2f}x")

    ratio("ours-fp32", "trl-fp32-lowest")
    ratio("ours-fp32-lean", "trl-fp32-lowest")
    ratio("ours-bf16-pure-lean", "trl-bf16-lowest")
    ratio("ours-bf16", "trl-bf16")
    ratio("ours-fp32-lora", "ours-fp32")
    ratio("fsdp-2", "ddp-2")


if __name__ == "__main__":
    main()
