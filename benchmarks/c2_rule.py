"""C2's rule on constructed sweeps of equal losses: how often does it say "does not hold" when the
six losses at beta 0.1 are, by construction, on par?

    python benchmarks/c2_rule.py [--sweeps 30] [--seed-sd 0.015] [--seeds 2] [--shift 0]

Each sweep: 768 prompts of random difficulty (shared by every run, as the reproduction's
evaluation prompts are), six losses, each trained with ``--seeds`` seeds; a run's chance of
winning a comparison is its prompt's difficulty plus a seed effect (normal, ``--seed-sd``; 0.015 is
about what the reproduction measured: a median of 60% of a difference's bootstrap variance from
its seeds), two comparisons a prompt. ``--shift`` puts the first loss that far ahead. Prints, as
JSON, the verdicts of the earlier rule (any difference whose own seed x prompt bootstrap interval
excludes 0) and of the current one (analysis of variance over seeds) over the same sweeps.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gpo_core.sweep.cells import differences, group_cells
from gpo_core.sweep.claims import c2_on_par


def constructed_sweep(rng: np.random.Generator, seeds: int, seed_sd: float, shift: float) -> tuple[list, dict]:
    difficulty = rng.beta(2, 2, size=768)
    runs, outcomes = [], {}
    for k in range(6):
        for s in range(seeds):
            chance = np.clip(difficulty + rng.normal(0, seed_sd) + (shift if k == 0 else 0.0), 0, 1)
            wins = rng.random((768, 2)) < chance[:, None]
            run_id = f"loss{k}-b0.1-s{s}"
            runs.append({"id": run_id, "loss": f"loss{k}", "beta": 0.1, "seed": s, "flags": [], "traces": [],
                         "judgement": {"win_rate": {"rate": float(wins.mean())}}})  # fmt: skip
            outcomes[run_id] = {f"p{j}": ["win" if w else "loss" for w in wins[j]] for j in range(768)}
    return group_cells(runs, outcomes), outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=30)
    parser.add_argument("--seed-sd", type=float, default=0.015)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--shift", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    verdicts: dict[str, list[str]] = {"earlier rule": [], "current rule": []}
    started = time.perf_counter()
    for _ in range(args.sweeps):
        cells, outcomes = constructed_sweep(rng, args.seeds, args.seed_sd, args.shift)
        verdicts["earlier rule"].append(c2_on_par([], {}, differences(cells, outcomes))["verdict"])
        verdicts["current rule"].append(c2_on_par(cells, outcomes, [])["verdict"])
    counts = {rule: {v: found.count(v) for v in sorted(set(found))} for rule, found in verdicts.items()}
    print(json.dumps({"args": vars(args), "verdicts": counts, "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
