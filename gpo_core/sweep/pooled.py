"""The claims over several jobs of one grid: the same sweep run again with other base seeds.

A job trains each cell with ``seeds`` seeds; a verdict that two seeds give can still change with
the next two. To ask whether it does, run the grid again with another ``training.seed`` and pool
the jobs here: each job's claims are decided on its own seeds (by the current rules, so an old
job folder is decided again), then once more on every seed of every job, its cells pooling all of
them. The jobs must be the same grid (task, losses, betas, training, judge): only their names and
seeds may differ, and no seed may be trained twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gpo_core.errors import InputError
from gpo_core.sweep.report import decide, read_job, read_judge_eval, read_runs

# What two jobs of one grid may differ in: a name, and which (and how many) seeds they train.
# Sampling is seeded too; comparisons choose what else is judged, not how the claims are decided.
MAY_DIFFER = {("name",), ("seeds",), ("training", "seed"), ("generation", "seed"), ("comparisons",)}


class PoolError(InputError):
    """Job folders that cannot be pooled (another grid, a seed trained twice, not a job)."""


def _differences(a: object, b: object, path: tuple[str, ...] = ()) -> list[str]:
    """Where two specs (as job.json stores them) differ, as dotted field names, less MAY_DIFFER."""
    if path in MAY_DIFFER:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), (*path, key))]
    return [] if a == b else [".".join(path) or "(spec)"]


def _seeded(spec, runs: list[dict], outcomes: dict) -> tuple[list[dict], dict]:
    """A one-seed job's runs carry no seed of their own (their ids end without ``-sN``): give them
    the job's training seed, so that they pool with other jobs' runs as seeds of their cells."""
    seeded, by_id = [], {}
    for run in runs:
        if run["seed"] is None:
            seed = spec.training.seed
            seeded.append({**run, "seed": seed, "id": f"{run['id']}-s{seed}"})
        else:
            seeded.append(run)
        by_id[seeded[-1]["id"]] = outcomes[run["id"]]
    return seeded, by_id


def pooled_claims(job_dirs: Sequence[str | Path]) -> dict:
    """Each job's claims on its own seeds, then the claims on all their seeds pooled."""
    if not job_dirs:
        raise PoolError("give at least one job folder")
    folders = [Path(d) for d in job_dirs]
    jobs = []
    for folder in folders:
        try:
            jobs.append(read_job(folder))
        except FileNotFoundError as err:
            raise PoolError(str(err)) from None
    first_folder, (first_job, _) = folders[0], jobs[0]
    for folder, (job, _) in zip(folders[1:], jobs[1:], strict=True):
        fields = _differences(first_job["spec"], job["spec"])
        if fields:
            raise PoolError(
                f"{folder}: not the same grid as {first_folder} ({', '.join(fields)} differ); "
                "only the name, seeds, training.seed, generation.seed and comparisons may"
            )
    all_runs: list[dict] = []
    all_outcomes: dict = {}
    trained_by: dict[int, Path] = {}
    per_job = []
    judge_evals = []
    for folder, (_, spec) in zip(folders, jobs, strict=True):
        runs, outcomes, _ = read_runs(spec, folder)
        runs, outcomes = _seeded(spec, runs, outcomes)
        seeds = sorted({run["seed"] for run in runs})
        for seed in seeds:
            if seed in trained_by:
                raise PoolError(
                    f"{folder}: seed {seed} was trained by {trained_by[seed]} too; pool jobs of other "
                    "seeds (training.seed)"
                )
            trained_by[seed] = folder
        judge_eval = read_judge_eval(folder)
        judge_evals.append(judge_eval)
        decided = decide(runs, outcomes, judge_eval, wanted=True)
        per_job.append({"job": str(folder), "name": spec.name, "seeds": seeds, **decided})
        all_runs += runs
        all_outcomes |= outcomes
    judge_eval = next((e for e in judge_evals if e and e.get("position_bias_exceeds_signal")), judge_evals[0])
    pooled = decide(all_runs, all_outcomes, judge_eval, wanted=True)
    by_job = [{c["claim"]: c["verdict"] for c in job["claims"]} for job in per_job]
    return {
        "jobs": per_job,
        "seeds": sorted(trained_by),
        **pooled,
        "verdicts_differ": [c["claim"] for c in pooled["claims"] if len({v[c["claim"]] for v in by_job}) > 1],
    }
