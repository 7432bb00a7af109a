"""The claims' rules on constructed sweeps whose answer is known: how often does a rule decide
what is not true, and how often does it find what is? Each prints, as JSON, the verdicts of every
rule the claim has had, over the same sweeps, and how often consecutive sweeps (1-2, 3-4, ...)
agree, as two base seeds of one task would (c4: the current rule and the one considered to
replace it, each task trained with two base seeds).

    python benchmarks/claim_rules.py c2 [--sweeps 30] [--seed-sd 0.015] [--seeds 2] [--shift 0] [--seed 0]
                                        [--profile-sd 0] [--shared-draws] [--fast-only]
    python benchmarks/claim_rules.py c1 [--sweeps 30] [--seed-sd 0.015] [--seeds 2] [--peak 0] [--at 0.3]
                                        [--losses 1] [--seed 0] [--fast-only]
    python benchmarks/claim_rules.py c4 [--sweeps 30] [--seeds 2] [--closer 0] [--alike-at BETA ...]
                                        [--loss-sd 0.38] [--seed-sd 0.1] [--run-sd 0.5] [--seed 0]

Every sweep has 768 prompts of random difficulty shared by every run (as the reproduction's
evaluation prompts are), each cell trained with ``--seeds`` seeds, two comparisons a prompt; a
run's chance of winning a comparison is its prompt's difficulty plus seed effects (normal, sd
``--seed-sd``; 0.015 is about what the reproduction measured: a median of 60% of a difference's
bootstrap variance from its seeds).

- c2: six losses at beta 0.1, each run with a seed effect of its own; ``--shift`` puts the first
  loss that far ahead (within the claim's margin of 0.1, all are on par, so "does not hold" is
  wrong; beyond it, "holds" is). Its rules: any difference whose own seed x prompt bootstrap
  interval excludes 0 (to 2026-12-06); the analysis of variance, seeds as blocks, its F test first
  (to 2026-12-07); the decision by the margin on the same t intervals (current). ``--profile-sd``:
  each loss also has a chance of its own on each prompt, the same for its seeds (centred, so the
  losses stay on par over the prompts); ``--shared-draws``: every run's outcomes come from one set
  of uniform draws, as the runs' samples came from one sampling seed until 2026-12-07 (a policy's
  answer then follows the draw, and two seeds of a loss answer alike), else each run draws its own,
  as each run now samples with its own seed.
- c1: ``--losses`` losses alike at the reproduction's seven betas, with a seed effect every run of
  a seed shares (a seed fixes the data order) and one of each run; ``--peak`` lifts the cells at
  beta ``--at`` that much (0: flat curves, so both "holds" and "does not hold" are wrong); the
  sweep's C1 verdict, as the report decides it over its losses. Its rules: the share of seed x
  prompt bootstrap resamples whose argmax is in [0.1, 1] (to 2026-12-07); the best beta inside
  against the best outside, seeds as blocks (current).
- c4: three case-I and three case-II losses at the seven betas; a run's log final KL is its beta's
  level (4.4 at 0.01 down to 0.6 at 1 and 3, as in the reproduction) plus ``--closer`` for a case-I
  loss (0: the kinds alike, so both "holds" and "does not hold" are wrong) except at the betas
  ``--alike-at`` (the Llama grid's pattern: 0.1, where its two kinds came out alike), plus a loss-at-beta
  effect fixed for the task (sd ``--loss-sd``), a seed effect each kind's runs of a seed share (sd
  ``--seed-sd``, in a log) and one of each run (sd ``--run-sd``). Each task is trained twice, with
  seeds 0.. and with other seeds, as the reproduction is with two base seeds: besides both rules'
  verdicts, how often the two base seeds agree. Current rule: the sign test over betas of the
  seeds' mean KLs; considered (not adopted, see docs/evaluation.md): the mean log KL ratio over
  betas and seeds, both random. The defaults of the sds are the Llama grid's (2026-12-07).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator

import numpy as np
from scipy import stats as scipy_stats

from gpo_core.analysis import analyze
from gpo_core.sweep.cells import differences, group_cells
from gpo_core.sweep.claims import (
    ALPHA,
    EQUIVALENCE_MARGIN,
    FAILS,
    HOLDS,
    PAIRWISE_BETA,
    UNRESOLVED,
    c1_peak_beta,
    c2_on_par,
    c4_case_two_closer,
    cells_and_seeds,
    peak_share_by_bootstrap,
)

PROMPTS = 768
BETAS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
Sweep = tuple[list[dict], dict]
Row = tuple[str, float, int, float]


def constructed_runs(
    rng: np.random.Generator,
    difficulty: np.ndarray,
    rows: Iterator[Row],
    profiles: dict[str, np.ndarray] | None = None,
    draws: np.ndarray | None = None,
) -> Sweep:
    """Cells from (loss, beta, seed, chance shift) rows, each run's outcomes drawn on the shared
    prompts. ``rows`` is drawn lazily, one row before its run's outcomes: the order of draws of
    the two scripts this one replaces, so their figures (docs/evaluation.md) come out again.
    ``profiles``: a loss's own chance on each prompt, added for every seed of it; ``draws``: one
    set of uniforms (prompts x 2) every run's outcomes come from, as when every run was sampled
    with the same seed (before 2026-12-07), else each run draws its own."""
    runs, outcomes = [], {}
    for loss, beta, seed, shift in rows:
        chance = difficulty + shift + (profiles[loss] if profiles else 0.0)
        uniforms = rng.random((PROMPTS, 2)) if draws is None else draws
        wins = uniforms < np.clip(chance, 0, 1)[:, None]
        run_id = f"{loss}-b{beta:g}-s{seed}"
        runs.append({"id": run_id, "loss": loss, "beta": beta, "seed": seed, "flags": [], "traces": [],
                     "judgement": {"win_rate": {"rate": float(wins.mean())}}})  # fmt: skip
        outcomes[run_id] = {f"p{j}": ["win" if w else "loss" for w in wins[j]] for j in range(PROMPTS)}
    return group_cells(runs, outcomes), outcomes


def c2_sweep(rng: np.random.Generator, args: argparse.Namespace) -> Sweep:
    difficulty = rng.beta(2, 2, size=PROMPTS)
    profiles = None
    if args.profile_sd:  # drawn only when asked, so the figures without it come out as before
        profiles = {f"loss{k}": rng.normal(0, args.profile_sd, size=PROMPTS) for k in range(6)}
        profiles = {loss: p - p.mean() for loss, p in profiles.items()}  # on par over these prompts
    draws = rng.random((PROMPTS, 2)) if args.shared_draws else None
    rows = ((f"loss{k}", 0.1, s, rng.normal(0, args.seed_sd) + (args.shift if k == 0 else 0.0))
            for k in range(6) for s in range(args.seeds))  # fmt: skip
    return constructed_runs(rng, difficulty, rows, profiles, draws)


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


C4_LOSSES = ("logistic", "exponential", "savage", "hinge", "square", "truncated_quadratic")
C4_TAIL = {loss: analyze(loss).tail for loss in C4_LOSSES}  # "I" or "II"
C4_LEVELS = dict(zip(BETAS, np.log([4.4, 1.6, 0.9, 0.6, 0.6, 0.7, 0.8]), strict=True))  # the Llama grid's


def c4_task(rng: np.random.Generator, args: argparse.Namespace) -> dict[tuple[str, float], float]:
    """Each loss's log final KL at each beta, before seeds: what a task fixes."""

    def closer(loss: str, beta: float) -> float:
        return args.closer if C4_TAIL[loss] == "I" and beta not in args.alike_at else 0.0

    return {(loss, beta): C4_LEVELS[beta] + closer(loss, beta) + rng.normal(0, args.loss_sd)
            for loss in C4_LOSSES for beta in BETAS}  # fmt: skip


def c4_runs(rng: np.random.Generator, args: argparse.Namespace, task: dict, first_seed: int) -> list[dict]:
    """The task trained with ``args.seeds`` seeds from ``first_seed``: runs with a final KL trace."""
    runs = []
    for seed in range(first_seed, first_seed + args.seeds):
        shift = {"I": rng.normal(0, args.seed_sd), "II": rng.normal(0, args.seed_sd)}
        for (loss, beta), level in task.items():
            kl = math.exp(level + shift[C4_TAIL[loss]] + rng.normal(0, args.run_sd))
            runs.append({"id": f"{loss}-b{beta:g}-s{seed}", "loss": loss, "beta": beta, "seed": seed,
                         "traces": [{"kl": kl}]})  # fmt: skip
    return runs


def mean_log_ratio(runs: list[dict]) -> str:
    """The considered C4 rule (not adopted): the mean over betas and seeds of log(case-I mean final
    KL / case-II mean), with a 95% t interval that counts betas and seeds as random (two-way random
    effects, var = (MS_betas + MS_seeds - MS_residual) / (betas x seeds), the seeds' share kept only
    where positive, Satterthwaite's degrees of freedom)."""
    kls: dict[tuple[float, int], dict[str, list[float]]] = {}
    for r in runs:
        kls.setdefault((r["beta"], r["seed"]), {"I": [], "II": []})[C4_TAIL[r["loss"]]].append(r["traces"][-1]["kl"])
    betas, seeds = sorted({b for b, _ in kls}), sorted({s for _, s in kls})
    table = np.array([[math.log(np.mean(kls[b, s]["I"]) / np.mean(kls[b, s]["II"])) for s in seeds] for b in betas])
    (n_betas, n_seeds), mean = table.shape, float(table.mean())
    _, ms_residual, dof_residual = cells_and_seeds(table)
    terms = [(n_seeds * float(np.var(table.mean(1), ddof=1)), n_betas - 1)]
    ms_seeds = n_betas * float(np.var(table.mean(0), ddof=1))
    if ms_seeds > ms_residual:
        terms += [(ms_seeds, n_seeds - 1), (-ms_residual, dof_residual)]
    total = sum(ms for ms, _ in terms)
    dof = total**2 / sum(ms**2 / d for ms, d in terms)
    half = float(scipy_stats.t.ppf(0.975, dof)) * math.sqrt(total / table.size)
    return HOLDS if mean - half > 0 else FAILS if mean + half < 0 else UNRESOLVED


def c4_verdicts(runs: list[dict]) -> tuple[str, str]:
    """(the current rule's verdict: the sign test over betas of the seeds' mean KLs; the considered one's)."""
    return c4_case_two_closer(runs, C4_TAIL)["verdict"], mean_log_ratio(runs)


def c4_main(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    verdicts: dict[str, list[str]] = {"current rule": [], "considered rule": []}
    agree = {"current rule": 0, "considered rule": 0}
    started = time.perf_counter()
    for _ in range(args.sweeps):
        task = c4_task(rng, args)
        first = c4_verdicts(c4_runs(rng, args, task, 0))
        second = c4_verdicts(c4_runs(rng, args, task, args.seeds))
        for k, rule in enumerate(verdicts):
            verdicts[rule] += [first[k], second[k]]
            agree[rule] += first[k] == second[k]
    counts = {rule: {v: found.count(v) for v in sorted(set(found))} for rule, found in verdicts.items()}
    print(json.dumps({"args": vars(args), "verdicts (both base seeds)": counts, "base seeds agree": agree,
                      "seconds": round(time.perf_counter() - started, 1)}))  # fmt: skip


def c2_by_differences(cells: list[dict], outcomes: dict) -> str:
    """C2's first rule (to 2026-12-06): every paired difference's own seed x prompt bootstrap
    interval; one that excludes 0 does not hold, all inside the margin holds."""
    found = [d for d in differences(cells, outcomes) if math.isclose(d["beta"], PAIRWISE_BETA)]
    if any(d["resolved"] for d in found):
        return FAILS
    inside = all(d["low"] >= -EQUIVALENCE_MARGIN and d["high"] <= EQUIVALENCE_MARGIN for d in found)
    return HOLDS if inside else UNRESOLVED


def c2_verdicts(cells: list[dict], outcomes: dict, seed: int, fast_only: bool) -> dict[str, str]:
    """Every rule C2 has had, on one sweep. The second (2026-12-06 to 2026-12-07) asked the F test
    first (p < 0.05 does not hold) and then the margin; the current one asks the margin alone. Both
    read the same analysis of variance, computed once."""
    found = c2_on_par(cells, outcomes, [])
    f_test_first = FAILS if found["p"] < ALPHA else HOLDS if found["widest"] <= EQUIVALENCE_MARGIN else UNRESOLVED
    earlier = {} if fast_only else {"bootstrap differences (to 2026-12-06)": c2_by_differences(cells, outcomes)}
    return {**earlier, "F test first (2026-12-06 to 2026-12-07)": f_test_first,
            "by the margin (current)": found["verdict"]}  # fmt: skip


def c1_verdicts(cells: list[dict], outcomes: dict, seed: int, fast_only: bool) -> dict[str, str]:
    """Every rule C1 has had, on one sweep."""
    earlier = {} if fast_only else {"bootstrap share (to 2026-12-07)": c1_by_bootstrap(cells, outcomes, seed)}
    return {**earlier, "seeds as blocks (current)": c1_peak_beta(cells, outcomes, seed=seed)["verdict"]}


# Each claim's constructed sweeps and its rules' verdicts by name: the rules it had before and the
# one it has, so the figures docs/evaluation.md cites come out again. --fast-only leaves out the
# rules with a bootstrap (most of the time).
RULES: dict[str, tuple[Callable[[np.random.Generator, argparse.Namespace], Sweep],
                       Callable[[list[dict], dict, int, bool], dict[str, str]]]] = {
    "c2": (c2_sweep, c2_verdicts),
    "c1": (c1_sweep, c1_verdicts),
}  # fmt: skip


def agreement(found: list[str]) -> float:
    """The share of consecutive pairs of sweeps (1-2, 3-4, ...) with the same verdict: as two base
    seeds of one task would agree, the task's truth being the same for every sweep."""
    pairs = len(found) // 2
    return sum(found[2 * k] == found[2 * k + 1] for k in range(pairs)) / pairs if pairs else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("claim", choices=sorted([*RULES, "c4"]))
    parser.add_argument("--sweeps", type=int, default=30)
    parser.add_argument("--seed-sd", type=float, help="a seed effect's sd: c1, c2 0.015 (win rate); c4 0.1 (log KL)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--shift", type=float, default=0.0, help="c2: the first loss's lead")
    parser.add_argument("--profile-sd", type=float, default=0.0, help="c2: sd of a loss's own chance on each prompt")
    parser.add_argument("--shared-draws", action="store_true", help="c2: every run's outcomes from one set of draws")
    parser.add_argument("--peak", type=float, default=0.0, help="c1: the lift of the cell at --at")
    parser.add_argument("--at", type=float, default=0.3, help="c1: the beta of the peak")
    parser.add_argument("--losses", type=int, default=1, help="c1: losses alike in a sweep, decided as C1 is")
    parser.add_argument("--closer", type=float, default=0.0, help="c4: case I's log KL above case II's")
    parser.add_argument("--alike-at", type=float, nargs="*", default=[], help="c4: betas where --closer is 0")
    parser.add_argument("--loss-sd", type=float, default=0.38, help="c4: a loss-at-beta effect's sd (log KL)")
    parser.add_argument("--run-sd", type=float, default=0.5, help="c4: a run's own effect's sd (log KL)")
    parser.add_argument("--fast-only", action="store_true", help="c1, c2: leave out the rules with a bootstrap")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.seed_sd is None:
        args.seed_sd = 0.1 if args.claim == "c4" else 0.015
    if args.claim == "c4":
        c4_main(args)
        return
    construct, rules = RULES[args.claim]
    rng = np.random.default_rng(args.seed)
    verdicts: dict[str, list[str]] = {}
    started = time.perf_counter()
    for k in range(args.sweeps):
        cells, outcomes = construct(rng, args)
        for name, verdict in rules(cells, outcomes, k, args.fast_only).items():
            verdicts.setdefault(name, []).append(verdict)
    counts = {rule: {v: found.count(v) for v in sorted(set(found))} for rule, found in verdicts.items()}
    agree = {rule: round(agreement(found), 3) for rule, found in verdicts.items()}
    print(json.dumps({"args": vars(args), "verdicts": counts, "consecutive sweeps agree": agree,
                      "seconds": round(time.perf_counter() - started, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
