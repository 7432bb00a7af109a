"""The claims' rules on constructed sweeps whose answer is known: how often does a rule decide
what is not true, and how often does it find what is? Each prints, as JSON, the verdicts of the
earlier rule and of the current one over the same sweeps.

    python benchmarks/claim_rules.py c2 [--sweeps 30] [--seed-sd 0.015] [--seeds 2] [--shift 0] [--seed 0]
    python benchmarks/claim_rules.py c1 [--sweeps 30] [--seed-sd 0.015] [--seeds 2] [--peak 0] [--at 0.3]
                                        [--losses 1] [--seed 0]

Every sweep has 768 prompts of random difficulty shared by every run (as the reproduction's
evaluation prompts are), each cell trained with ``--seeds`` seeds, two comparisons a prompt; a
run's chance of winning a comparison is its prompt's difficulty plus seed effects (normal, sd
``--seed-sd``; 0.015 is about what the reproduction measured: a median of 60% of a difference's
bootstrap variance from its seeds).

- c2: six losses at beta 0.1, each run with a seed effect of its own; ``--shift`` puts the first
  loss that far ahead (0: all on par, so "does not hold" is wrong). Earlier rule: any difference
  whose own seed x prompt bootstrap interval excludes 0; current: analysis of variance, seeds as
  blocks.
- c1: ``--losses`` losses alike at the reproduction's seven betas, with a seed effect every run of
  a seed shares (a seed fixes the data order) and one of each run; ``--peak`` lifts the cells at
  beta ``--at`` that much (0: flat curves, so both "holds" and "does not hold" are wrong); the
  sweep's C1 verdict, as the report decides it over its losses. Earlier rule: the
  share of seed x prompt bootstrap resamples whose argmax is in [0.1, 1]; current: the best beta
  inside against the best outside, seeds as blocks.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator

import numpy as np

from gpo_core.sweep.cells import differences, group_cells
from gpo_core.sweep.claims import FAILS, HOLDS, UNRESOLVED, c1_peak_beta, c2_on_par, peak_share_by_bootstrap

PROMPTS = 768
BETAS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
Sweep = tuple[list[dict], dict]
Row = tuple[str, float, int, float]


def constructed_runs(rng: np.random.Generator, difficulty: np.ndarray, rows: Iterator[Row]) -> Sweep:
    """Cells from (loss, beta, seed, chance shift) rows, each run's outcomes drawn on the shared
    prompts. ``rows`` is drawn lazily, one row before its run's outcomes: the order of draws of
    the two scripts this one replaces, so their figures (docs/evaluation.md) come out again."""
    runs, outcomes = [], {}
    for loss, beta, seed, shift in rows:
        wins = rng.random((PROMPTS, 2)) < np.clip(difficulty + shift, 0, 1)[:, None]
        run_id = f"{loss}-b{beta:g}-s{seed}"
        runs.append({"id": run_id, "loss": loss, "beta": beta, "seed": seed, "flags": [], "traces": [],
                     "judgement": {"win_rate": {"rate": float(wins.mean())}}})  # fmt: skip
        outcomes[run_id] = {f"p{j}": ["win" if w else "loss" for w in wins[j]] for j in range(PROMPTS)}
    return group_cells(runs, outcomes), outcomes


def c2_sweep(rng: np.random.Generator, args: argparse.Namespace) -> Sweep:
    difficulty = rng.beta(2, 2, size=PROMPTS)
    rows = ((f"loss{k}", 0.1, s, rng.normal(0, args.seed_sd) + (args.shift if k == 0 else 0.0))
            for k in range(6) for s in range(args.seeds))  # fmt: skip
    return constructed_runs(rng, difficulty, rows)


def c1_sweep(rng: np.random.Generator, args: argparse.Namespace) -> Sweep:
    difficulty = rng.beta(2, 2, size=PROMPTS)
    shared = rng.normal(0, args.seed_sd, size=args.seeds)
    rows = ((f"loss{k}" if k else "loss", beta, s,
             shared[s] + rng.normal(0, args.seed_sd) + (args.peak if beta == args.at else 0.0))
            for k in range(args.losses) for beta in BETAS for s in range(args.seeds))  # fmt: skip
    return constructed_runs(rng, difficulty, rows)


def c1_by_bootstrap(cells: list[dict], outcomes: dict, seed: int) -> str:
    """The earlier C1 rule: each loss's bootstrap share; any loss that does not hold fails the
    claim, every loss holding makes it hold."""
    found = [
        (peak_share_by_bootstrap([c for c in cells if c["loss"] == loss], outcomes, seed=seed) or {})["verdict"]
        for loss in dict.fromkeys(c["loss"] for c in cells)
    ]
    return FAILS if FAILS in found else HOLDS if all(v == HOLDS for v in found) else UNRESOLVED


RULES: dict[str, tuple[Callable, Callable[[list, dict, int], str], Callable[[list, dict, int], str]]] = {
    "c2": (
        c2_sweep,
        lambda cells, outcomes, k: c2_on_par([], {}, differences(cells, outcomes))["verdict"],
        lambda cells, outcomes, k: c2_on_par(cells, outcomes, [])["verdict"],
    ),
    "c1": (
        c1_sweep,
        lambda cells, outcomes, k: c1_by_bootstrap(cells, outcomes, k),
        lambda cells, outcomes, k: c1_peak_beta(cells, outcomes, seed=k)["verdict"],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("claim", choices=sorted(RULES))
    parser.add_argument("--sweeps", type=int, default=30)
    parser.add_argument("--seed-sd", type=float, default=0.015)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--shift", type=float, default=0.0, help="c2: the first loss's lead")
    parser.add_argument("--peak", type=float, default=0.0, help="c1: the lift of the cell at --at")
    parser.add_argument("--at", type=float, default=0.3, help="c1: the beta of the peak")
    parser.add_argument("--losses", type=int, default=1, help="c1: losses alike in a sweep, decided as C1 is")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    construct, earlier, current = RULES[args.claim]
    rng = np.random.default_rng(args.seed)
    verdicts: dict[str, list[str]] = {"earlier rule": [], "current rule": []}
    started = time.perf_counter()
    for k in range(args.sweeps):
        cells, outcomes = construct(rng, args)
        verdicts["earlier rule"].append(earlier(cells, outcomes, k))
        verdicts["current rule"].append(current(cells, outcomes, k))
    counts = {rule: {v: found.count(v) for v in sorted(set(found))} for rule, found in verdicts.items()}
    print(json.dumps({"args": vars(args), "verdicts": counts, "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
