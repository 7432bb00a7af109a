"""An online run's results, read from its job folder for the report (the rounds themselves are
:mod:`gpo_core.sweep.online`'s): its training records over the rounds, and the report's online part."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gpo_core.sweep.pipeline import marker, round_dir
from gpo_core.sweep.spec import JobSpec


def round_metrics(spec: JobSpec, job_dir: Path, run: str, read: Callable[[Path], list[dict]]) -> list[dict]:
    """An online run's training records over its rounds, each tagged with its round and its step
    counted from the run's start as its events count it (round R's first step is R x
    steps_per_round + 1); ``read``: a metrics file's records."""
    assert spec.online is not None
    records: list[dict] = []
    for r in range(spec.online.rounds):
        for record in read(round_dir(job_dir, run, r) / "train" / "metrics.jsonl"):
            shifted = {**record, "round": r}
            if "step" in record:
                shifted["step"] = record["step"] + r * spec.online.steps_per_round
            records.append(shifted)
    return records


def summary(spec: JobSpec, job_dir: Path, runs: list[dict], cells: list[dict], found: list[dict]) -> dict | None:
    """The report's online part: each online run round by round (pairs the annotator decided, its
    ties and flips, the labels' agreement with the evaluation judge, the gold reward of the
    policy's samples on the built-in task, the round's policy's win rate against the reference with
    ``online.eval_prompts``, the KL from pi_ref at the round's end), and each online
    cell against the offline cell of the same loss and beta on the same budget: the paired
    difference of their win rates against the reference."""
    if spec.online is None:
        return None
    rounds: dict[str, list[dict]] = {}
    for run in runs:
        if run.get("mode") != "online":
            continue
        rows = []
        for r in range(spec.online.rounds):
            labels = marker(job_dir, run["id"], "judge", r)
            if not labels.exists():
                break
            row = {k: v for k, v in json.loads(labels.read_text()).items() if k != "annotator_calls"}
            kls = [t["kl"] for t in run["traces"] if t.get("round") == r and "kl" in t]
            row["kl_at_end"] = kls[-1] if kls else None
            rows.append(row)
        rounds[run["id"]] = rows
    mode = {cell["id"]: cell["mode"] for cell in cells}
    versus = [
        {"loss": d["loss_a"], "beta": d["beta"], "online": d["a"], "offline": d["b"], **d}
        for d in found
        if d["loss_a"] == d["loss_b"] and mode.get(d["a"]) == "online" and mode.get(d["b"]) == "offline"
    ]
    return {
        "judged_pairs_per_run": spec.online.judged_pairs,
        "steps_per_run": spec.online.steps,
        "rounds": rounds,
        "versus_offline": versus,
    }
