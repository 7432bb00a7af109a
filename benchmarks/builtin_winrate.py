"""Does GPO training really optimize preferences? Train on the built-in task (default size) and
measure the oracle judge's win rate against pi_ref on the held-out evaluation prompts.

    python benchmarks/builtin_winrate.py [--loss logistic] [--beta 0.1] [--steps 300] [--lr 5e-4]

Prints the training time, the win rate with its 95% bootstrap interval (over prompts) and the
mean gold rewards, as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from gpo_core.task.build import BuiltTask, build_task, task_settings
from gpo_core.task.evaluate import oracle_win_rate
from gpo_core.train.loop import train
from gpo_core.train.metrics import ListSink
from gpo_core.train.spec import TrainingSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", default="logistic")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="comparisons per evaluation prompt")
    parser.add_argument("--size", default="default")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    args = parser.parse_args()

    task = BuiltTask(build_task(None, task_settings(args.size)).root)
    out = args.out or tempfile.mkdtemp(prefix="gpo-winrate-")
    spec = TrainingSpec(
        policy=task.artifacts.model_dir,
        dataset=task.artifacts.train_pairs,
        output_dir=out,
        loss=args.loss,
        beta=args.beta,
        lr=args.lr,
        warmup_steps=10,
        batch_size=args.batch_size,
        steps=args.steps,
        max_response_length=16,
    )
    started = time.perf_counter()
    result = train(spec, ListSink())
    seconds = time.perf_counter() - started
    judged, rewards = oracle_win_rate(task, result.final_model_dir, samples=args.samples)
    report = {
        "command": "python benchmarks/builtin_winrate.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "train_seconds": round(seconds, 1),
        "steps": result.steps,
        "final_train_metrics": {k: round(v, 4) for k, v in result.last_metrics.items() if isinstance(v, float)},
        "win_rate": judged.win_rate.to_dict(),
        "length_controlled_win_rate": judged.length_controlled.to_dict(),
        "flip_rate": judged.flip_rate,
        **{k: round(v, 4) for k, v in rewards.items()},
        "task": {k: task.artifacts.to_dict()[k] for k in ("root", "ref_mean_reward", "gold_mean_reward")},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
