"""A sweep's cells: a loss at a beta, trained once per seed (``JobSpec.seeds``).

The report decides on cells, not on single runs: a cell's win rate pools its seeds, and its
intervals (and those of differences between cells) come from the two-way bootstrap over seeds and
prompts in :mod:`gpo_core.stats`, so a verdict that changes with the seed is not resolved. A cell of
one run is that run, with the run's own numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from gpo_core.stats import paired_difference, shared_prompts, win_rate

Outcomes = Mapping[str, Mapping[str, Sequence[str]]]  # by run id: its outcomes against the reference, by prompt


def cell_id(run_id: str) -> str:
    """A run's cell: its id less the seed (``r03-hinge-b0.1-s2`` -> ``r03-hinge-b0.1``)."""
    return re.sub(r"-s\d+$", "", run_id)


def final_kl(run: dict) -> float | None:
    """A run's last traced KL(pi || pi_ref) (None for a run that diverged or was not traced)."""
    if run.get("diverged"):
        return None
    kls = [t["kl"] for t in run.get("traces", []) if "kl" in t]
    return kls[-1] if kls else None


def group_cells(runs: Sequence[dict], outcomes: Outcomes) -> list[dict]:
    """The runs by loss and beta, in the spec's order. Each cell has its runs, those judged (by
    seed), its win rate against the reference over the judged seeds, its mean final KL and the
    flags of its runs."""
    grouped: dict[tuple[str, float, str], list[dict]] = {}
    for run in runs:
        grouped.setdefault((run["loss"], run["beta"], run.get("mode", "offline")), []).append(run)
    cells = []
    for (loss, beta, mode), members in grouped.items():
        judged = [r for r in members if (r["judgement"] or {}).get("win_rate") and outcomes.get(r["id"])]
        rate = None
        if len(members) == 1:
            rate = (members[0]["judgement"] or {}).get("win_rate")
        elif judged and shared_prompts(*(outcomes[r["id"]] for r in judged)):
            rate = win_rate([outcomes[r["id"]] for r in judged]).to_dict()
        kls = [kl for r in judged if (kl := final_kl(r)) is not None]
        flags = (
            list(members[0]["flags"]) if len(members) == 1 else [f"{r['id']}: {f}" for r in members for f in r["flags"]]
        )
        diverged = [r["id"] for r in members if r.get("diverged")]
        if len(members) > 1 and diverged:
            flags.append(f"{len(diverged)} of its {len(members)} seeds diverged; its win rate is the others'")
        cells.append(
            {
                "id": cell_id(members[0]["id"]),
                "loss": loss,
                "beta": beta,
                "mode": mode,
                "runs": [r["id"] for r in members],
                "judged": {str(r.get("seed")): r["id"] for r in judged},  # by seed
                "win_rate": rate,
                "final_kl": sum(kls) / len(kls) if kls else None,
                "flags": flags,
            }
        )
    return cells


def _paired(a: dict, b: dict, outcomes: Outcomes) -> tuple[list, list] | None:
    """Two cells' outcomes on the seeds both judged, seed by seed; None when they share none."""
    seeds = [seed for seed in a["judged"] if seed in b["judged"]]
    if not seeds:
        return None
    sides = [outcomes[a["judged"][s]] for s in seeds], [outcomes[b["judged"][s]] for s in seeds]
    return sides if shared_prompts(*sides[0], *sides[1]) else None


def differences(cells: Sequence[dict], outcomes: Outcomes) -> list[dict]:
    """Every pair of judged cells at the same beta: win rate of A minus B against the reference,
    with a paired bootstrap over the seeds and prompts both were judged on ("loss A beats loss B
    at beta" as a statement with an interval). A is the one listed first in the spec."""
    rows = []
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            if a["beta"] != b["beta"] or (paired := _paired(a, b, outcomes)) is None:
                continue
            d = paired_difference(*paired)
            rows.append(
                {"beta": a["beta"], "a": a["id"], "b": b["id"], "loss_a": a["loss"], "loss_b": b["loss"], **d.to_dict()}
            )
    return rows


def headline(cells: Sequence[dict], runs: Sequence[dict], outcomes: Outcomes, why_not: str | None) -> dict | None:
    """The answer first: the cell with the best win rate against the reference, the cells it beats
    and those it cannot be told from (paired intervals over the seeds and prompts both were judged
    on), and whether its edge survives length control. None when nothing was judged or nothing can
    decide."""
    judged = [c for c in cells if c["win_rate"] and c["judged"]]
    if why_not is not None or not judged:
        return None
    best = max(judged, key=lambda c: c["win_rate"]["rate"])
    beats: list[str] = []
    level: list[str] = []
    for other in judged:
        if other is best or (paired := _paired(best, other, outcomes)) is None:
            continue
        d = paired_difference(*paired)
        (beats if d.low > 0 else level).append(other["id"])
    rate = best["win_rate"]
    versus = "better than" if rate["low"] > 0.5 else "worse than" if rate["high"] < 0.5 else "not told apart from"
    seeds = len(best["judged"])
    over = f"{best['id']}, {seeds} seeds" if seeds > 1 else best["id"]
    text = (
        f"Best: {best['loss']} at beta {best['beta']:g} ({over}), win rate {rate['rate']:.3f} "
        f"[{rate['low']:.3f}, {rate['high']:.3f}] against the reference ({versus} it)"
    )
    if rate.get("seed_share") is not None:
        text += f"; {rate['seed_share']:.0%} of that interval's variance is the seeds'"
    noun = "runs" if all(len(c["judged"]) <= 1 for c in judged) else "cells"
    if len(judged) > 1:
        text += f"; it beats {len(beats)} of the other {len(judged) - 1} {noun}"
        if level:
            shown = ", ".join(level[:5]) + (f" and {len(level) - 5} more" if len(level) > 5 else "")
            text += f" and cannot be told from {shown}"
    by_id = {r["id"]: r for r in runs}
    found = [(by_id[r]["judgement"] or {}).get("length_controlled") for r in best["judged"].values()]
    controlled: list[dict] = [c for c in found if c]
    if controlled:
        survives = all(c["low"] > 0.5 for c in controlled)
        if len(controlled) == 1:
            c = controlled[0]
            text += f"; length-controlled {c['rate']:.3f} [{c['low']:.3f}, {c['high']:.3f}]: "
        else:
            text += f"; length-controlled {min(c['rate'] for c in controlled):.3f} to "
            text += f"{max(c['rate'] for c in controlled):.3f} over its seeds: "
        text += "its edge survives length control" if survives else "its edge does not survive length control"
    if best["flags"]:
        text += f". Beware: {'; '.join(best['flags'])}"
    return {
        "run": best["id"],
        "loss": best["loss"],
        "beta": best["beta"],
        "seeds": seeds,
        "beats": beats,
        "level_with": level,
        "text": text + ".",
    }
