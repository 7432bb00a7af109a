"""Oracle evaluation on the built-in task: sample both policies on the evaluation prompts and
let the gold reward decide (deterministic oracle judge: higher reward wins, equal is a tie)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from gpo_core.data import load_prompts
from gpo_core.stats import WinRate, win_rate
from gpo_core.task.build import BuiltTask
from gpo_core.task.model import sample_summaries
from gpo_core.task.reward import OracleJudge
from gpo_core.train.loop import load_model


def oracle_win_rate(
    task: BuiltTask, policy_dir: str | Path, baseline_dir: str | Path | None = None, samples: int = 4, seed: int = 0
) -> tuple[WinRate, dict]:
    """Win rate of ``policy_dir`` against ``baseline_dir`` (default: the task's pi_ref), ``samples``
    comparisons per evaluation prompt, temperature 1; also the mean gold rewards."""
    prompts = [p["prompt"] for p in load_prompts(task.artifacts.eval_prompts)]
    tokenizer = AutoTokenizer.from_pretrained(task.artifacts.tokenizer_dir)
    policy = load_model(policy_dir)
    baseline = load_model(baseline_dir or task.artifacts.model_dir)
    judge = OracleJudge("deterministic")
    outcomes: list[list[str]] = [[] for _ in prompts]
    rewards = {"policy": [], "baseline": []}
    for k in range(samples):
        ours = sample_summaries(policy, tokenizer, prompts, 1.0, seed=seed * 1000 + 2 * k)
        theirs = sample_summaries(baseline, tokenizer, prompts, 1.0, seed=seed * 1000 + 2 * k + 1)
        for i, (prompt, a, b) in enumerate(zip(prompts, ours, theirs, strict=True)):
            document = task.document_for(prompt)
            verdict = judge.judge(document, a, b)
            outcomes[i].append({"a": "win", "b": "loss", "tie": "tie"}[verdict])
            rewards["policy"].append(task.reward(prompt, a))
            rewards["baseline"].append(task.reward(prompt, b))
    means = {f"{name}_mean_reward": sum(values) / len(values) for name, values in rewards.items()}
    return win_rate(outcomes, seed=seed), means
