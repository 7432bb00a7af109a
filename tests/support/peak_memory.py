"""Peak memory of a short real training run next to what ``gpo plan`` said it would need.

    python -m tests.support.peak_memory '{"shape": {...LlamaConfig fields...}, "batch_size": 8, ...}'

Builds a Llama with random weights of the given shape and pairs exactly at the length limits
(``max_prompt_length`` prompt tokens, ``max_response_length`` per response: the plan's worst
case), trains 3 steps in this process and prints one JSON line: planned bytes, peak RSS (this
process's high-water mark, runtime included, as the plan counts it) and their ratio. Run each
case in a fresh process: RSS never goes down.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gpo_core.data import write_jsonl
from gpo_core.task.tokenizer import word_level_tokenizer
from gpo_core.train.loop import train
from gpo_core.train.metrics import ListSink
from gpo_core.train.plan import plan
from gpo_core.train.spec import TrainingSpec

WORDS = 1000


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark since it started. Linux's VmHWM belongs to the address
    space, new at exec; ru_maxrss is kept across fork and exec, so a child of a large parent (a
    pytest process that ran vLLM) would report at least the parent's RSS."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(options: dict) -> dict:
    options = dict(options)
    shape = options.pop("shape")
    prompt = options.setdefault("max_prompt_length", 128)
    response = options.setdefault("max_response_length", 64)
    work = Path(tempfile.mkdtemp(prefix="gpo-peak-"))
    tokenizer = word_level_tokenizer([f"w{i}" for i in range(WORDS)])  # a word is a token; <s> starts a prompt
    config = LlamaConfig(max_position_embeddings=2 * (prompt + response), pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    rng = random.Random(0)

    def text(words: int) -> str:
        return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(words))

    rows = [{"prompt": text(prompt - 1), "chosen": text(response), "rejected": text(response)} for _ in range(32)]
    write_jsonl(work / "pairs.jsonl", rows)
    spec = TrainingSpec(
        policy=str(work / "model"), dataset=str(work / "pairs.jsonl"), output_dir=str(work / "run"),
        cache_dir=str(work / "cache"), loss="logistic", beta=0.1, steps=3, **options,
    )  # fmt: skip
    planned = plan(spec)
    train(spec, ListSink())
    peak = peak_rss_bytes()
    return {"planned": planned.total, "peak": peak, "ratio": planned.total / peak, "memory": planned.memory}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
