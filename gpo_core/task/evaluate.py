"""Oracle evaluation on the built-in task: sample both policies on the evaluation prompts and
judge each pair side by side (both orders) with the gold reward."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from gpo_core.data import load_prompts
from gpo_core.generate import sample_texts
from gpo_core.judging.comparison import SideBySide, side_by_side
from gpo_core.judging.judges import OracleTaskJudge
from gpo_core.models import load_model
from gpo_core.task.build import BuiltTask
from gpo_core.task.model import MAX_SUMMARY_TOKENS


def oracle_win_rate(
    task: BuiltTask, policy_dir: str | Path, baseline_dir: str | Path | None = None, samples: int = 4, seed: int = 0
) -> tuple[SideBySide, dict]:
    """``policy_dir`` against ``baseline_dir`` (default: the task's pi_ref): ``samples`` comparisons
    per evaluation prompt at temperature 1; also the mean gold rewards of both."""
    prompts = load_prompts(task.artifacts.eval_prompts)
    texts = [p["prompt"] for p in prompts]
    tokenizer = AutoTokenizer.from_pretrained(task.artifacts.tokenizer_dir)
    policy = load_model(policy_dir)
    baseline = load_model(baseline_dir or task.artifacts.model_dir)
    tokens = task.artifacts.settings.get("summary_tokens", MAX_SUMMARY_TOKENS)
    items = []
    for k in range(samples):
        ours = sample_texts(policy, tokenizer, texts, max_new_tokens=tokens, seed=seed * 1000 + 2 * k)
        theirs = sample_texts(baseline, tokenizer, texts, max_new_tokens=tokens, seed=seed * 1000 + 2 * k + 1)
        items += [
            {"prompt_id": p["id"], "prompt": p["prompt"], "a": a, "b": b}
            for p, a, b in zip(prompts, ours, theirs, strict=True)
        ]
    rewards = {
        "policy_mean_reward": sum(task.reward(i["prompt"], i["a"]) for i in items) / len(items),
        "baseline_mean_reward": sum(task.reward(i["prompt"], i["b"]) for i in items) / len(items),
    }
    return side_by_side(OracleTaskJudge(task), items, seed=seed), rewards
