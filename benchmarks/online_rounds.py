"""Where an online round's wall time goes, from a finished job folder run by the embedded runner
(``gpo run``), which runs each round's stages one after another: sampling ends when the round's
samples.jsonl is written, labelling when labels.json is, training when train.json is, so the gaps
between those files' times are the stages' wall times. Within training, the GPO steps' own time is
the sum of each step's pairs / pairs_per_s (metrics.jsonl); the rest of the training stage is
loading the model, the reference log-probs of the round's pairs, the KL trace, checkpoints and
saving the final model. Round 0's sampling has no earlier file to start from and is left out.

    python benchmarks/online_rounds.py JOB_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def round_times(run_dir: Path) -> list[dict]:
    rows = []
    folders = sorted((run_dir / "rounds").iterdir())
    previous_end: float | None = None
    for folder in folders:
        samples, labels, trained = (folder / name for name in ("samples.jsonl", "labels.json", "train.json"))
        if not trained.exists():
            break
        steps = [
            json.loads(line) for line in (folder / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()
        ]
        step_s = sum(r["pairs"] / r["pairs_per_s"] for r in steps if r.get("kind") == "step" and r.get("pairs_per_s"))
        train_s = trained.stat().st_mtime - labels.stat().st_mtime
        rows.append(
            {
                "round": int(folder.name),
                "sampling_s": None if previous_end is None else samples.stat().st_mtime - previous_end,
                "labelling_s": labels.stat().st_mtime - samples.stat().st_mtime,
                "training_s": train_s,
                "gpo_steps_s": step_s,
                "rest_of_training_s": train_s - step_s,
            }
        )
        previous_end = trained.stat().st_mtime
    return rows


def main(job_dir: str) -> None:
    print(f"$ python benchmarks/online_rounds.py {job_dir}")
    totals: dict[str, float] = {}
    for run_dir in sorted(Path(job_dir, "runs").iterdir()):
        if not (run_dir / "rounds").is_dir():
            continue
        print(run_dir.name)
        for row in round_times(run_dir):
            print("  " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if row["sampling_s"] is not None:
                for key, value in row.items():
                    if key != "round":
                        totals[key] = totals.get(key, 0.0) + value
    if totals:
        whole = totals["sampling_s"] + totals["labelling_s"] + totals["training_s"]
        print(f"rounds 1 and later, all runs: {whole:.0f} s")
        for key in ("sampling_s", "labelling_s", "gpo_steps_s", "rest_of_training_s"):
            print(f"  {key}: {totals[key]:.0f} s ({totals[key] / whole:.0%})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
