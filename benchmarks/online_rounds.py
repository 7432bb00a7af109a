"""Where an online round's wall time goes, from a finished job folder run by the embedded runner
(``gpo run``), which runs each round's stages one after another: sampling ends when the round's
samples.jsonl is written, labelling when labels.json is, training when train.json is, so the gaps
between those files' times are the stages' wall times. Within training, the training loop's
``end`` record says where its time went (``seconds``: reading the data, the reference log-probs of
the round's pairs, loading the policy, the GPO steps, the KL trace, checkpoints, saving the final
model); what is left of the stage is outside the loop (the stage's own set-up: the job's inputs,
the run's identity). Round 0's sampling has no earlier file to start from and is left out.

Overhead, as issue 32 counts it: everything but sampling, labelling and training proper (the GPO
steps and the reference pass on the round's fresh pairs); the two measurements a round can make
for the report, the KL trace and the sampling of ``online.eval_prompts`` (written first, to
eval-samples.jsonl; their judging is inside labelling), are shown apart from it.

    python benchmarks/online_rounds.py JOB_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PHASES = ("data", "reference", "load", "steps", "trace", "checkpoint", "save")
WORK = ("sampling_s", "labelling_s", "steps_s", "reference_s")  # the round's own work
OVERHEAD = ("data_s", "load_s", "checkpoint_s", "save_s", "outside_loop_s")


def round_times(run_dir: Path) -> list[dict]:
    rows = []
    previous_end: float | None = None
    for folder in sorted((run_dir / "rounds").iterdir()):
        samples, labels, trained = (folder / name for name in ("samples.jsonl", "labels.json", "train.json"))
        if not trained.exists():
            break
        records = [json.loads(line) for line in (folder / "train" / "metrics.jsonl").read_text().splitlines()]
        ends = [r for r in records if r.get("kind") == "end" and "seconds" in r]
        if not ends:
            sys.exit(f"{folder}: the round's training has no phase times (trained before they were recorded)")
        seconds = ends[-1]["seconds"]
        train_s = trained.stat().st_mtime - labels.stat().st_mtime
        evaluation = folder / "eval-samples.jsonl"  # written first, with online.eval_prompts
        sampled_from = evaluation.stat().st_mtime if evaluation.exists() else previous_end
        row = {
            "round": int(folder.name),
            "eval_sampling_s": None if previous_end is None else sampled_from - previous_end,
            "sampling_s": None if previous_end is None else samples.stat().st_mtime - sampled_from,
            "labelling_s": labels.stat().st_mtime - samples.stat().st_mtime,
            "training_s": train_s,
            **{f"{phase}_s": seconds.get(phase, 0.0) for phase in PHASES},
            "outside_loop_s": train_s - sum(seconds.values()),
        }
        rows.append(row)
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
            if row["eval_sampling_s"] is not None:  # round 0's sampling has no start to measure from
                for key, value in row.items():
                    if key != "round":
                        totals[key] = totals.get(key, 0.0) + value
    if not totals:
        return
    whole = totals["eval_sampling_s"] + totals["sampling_s"] + totals["labelling_s"] + totals["training_s"]
    print(f"rounds 1 and later, all runs: {whole:.0f} s")
    for key in (*WORK, "eval_sampling_s", "trace_s", *OVERHEAD):
        print(f"  {key}: {totals[key]:.0f} s ({totals[key] / whole:.1%})")
    overhead = sum(totals[key] for key in OVERHEAD)
    traced = overhead + totals["trace_s"]
    print(f"overhead: {overhead / whole:.1%} of the rounds' time ({traced / whole:.1%} with the KL trace)")
    print(f"the round's evaluation (online.eval_prompts) sampling: {totals['eval_sampling_s'] / whole:.1%}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
