"""C1's rule on constructed sweeps of one loss whose peak is known: how often does it say "holds"
or "does not hold" when the win rate is flat over beta (so neither is true), and how often does
it find a peak placed inside or outside [0.1, 1]?

    python benchmarks/c1_rule.py [--sweeps 30] [--seed-sd 0.015] [--seeds 2] [--peak 0] [--at 0.3]

Each sweep: 768 prompts of random difficulty shared by every run, seven betas (the reproduction's),
each trained with ``--seeds`` seeds; a run's chance of winning a comparison is its prompt's
difficulty plus a seed effect every beta of that seed shares (a seed fixes the data order) plus
one of the run's own, both normal with sd ``--seed-sd``, two comparisons a prompt. ``--peak``
lifts the cell at beta ``--at`` that much above the rest (0: a flat curve). Prints, as JSON, the
verdicts of the earlier rule (the share of seed x prompt bootstrap resamples whose argmax is in
[0.1, 1]) and of the current one (the best beta inside against the best outside, seeds as
blocks) over the same sweeps.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gpo_core.sweep.cells import group_cells
from gpo_core.sweep.claims import c1_peak_beta, peak_share_by_bootstrap

BETAS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
PROMPTS = 768


def constructed_sweep(
    rng: np.random.Generator, seeds: int, seed_sd: float, peak: float, at: float
) -> tuple[list[dict], dict]:
    difficulty = rng.beta(2, 2, size=PROMPTS)
    shared = rng.normal(0, seed_sd, size=seeds)
    runs, outcomes = [], {}
    for beta in BETAS:
        for s in range(seeds):
            lift = peak if beta == at else 0.0
            chance = np.clip(difficulty + shared[s] + rng.normal(0, seed_sd) + lift, 0, 1)
            wins = rng.random((PROMPTS, 2)) < chance[:, None]
            run_id = f"loss-b{beta:g}-s{s}"
            runs.append({"id": run_id, "loss": "loss", "beta": beta, "seed": s, "flags": [], "traces": [],
                         "judgement": {"win_rate": {"rate": float(wins.mean())}}})  # fmt: skip
            outcomes[run_id] = {f"p{j}": ["win" if w else "loss" for w in wins[j]] for j in range(PROMPTS)}
    return group_cells(runs, outcomes), outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=30)
    parser.add_argument("--seed-sd", type=float, default=0.015)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--peak", type=float, default=0.0)
    parser.add_argument("--at", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    verdicts: dict[str, list[str]] = {"earlier rule": [], "current rule": []}
    started = time.perf_counter()
    for k in range(args.sweeps):
        cells, outcomes = constructed_sweep(rng, args.seeds, args.seed_sd, args.peak, args.at)
        verdicts["earlier rule"].append(peak_share_by_bootstrap(cells, outcomes, seed=k)["verdict"])
        verdicts["current rule"].append(c1_peak_beta(cells, outcomes, seed=k)["verdict"])
    counts = {rule: {v: found.count(v) for v in sorted(set(found))} for rule, found in verdicts.items()}
    print(json.dumps({"args": vars(args), "verdicts": counts, "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
