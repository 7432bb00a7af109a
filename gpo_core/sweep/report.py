"""The sweep report: every number in one JSON, the paper's figures as PNG, one self-contained
HTML page (figures inlined), built from a job folder's artifacts alone (see ``stages``).

- Fig. 8: win rate against the reference versus beta, one line per loss, 95% intervals;
- Fig. 9: the pairwise win-rate matrix at one beta, with Bradley-Terry strengths;
- Fig. 5: KL(pi || pi_ref) against the mu-weighted square loss traced during training
  (symmetric-log axes: an estimate at or below zero, sampling noise, is shown, not dropped);
- training curves, one row per loss: loss, accuracy and reward margin per step (smoothed, on a
  scale set by the bulk of the values so one spike does not flatten the rest), and the held-out
  accuracy and margin at each trace;
- the settings the runs share, warnings when the judge cannot be trusted, and example responses
  of the reference and of each run side by side.

Runs still in flight are reported with what they have so far.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from gpo_core.data import write_json
from gpo_core.sweep.cells import Outcomes, differences, group_cells, headline
from gpo_core.sweep.claims import EQUIVALENCE_MARGIN, UNRESOLVED, claims
from gpo_core.sweep.rounds import round_metrics
from gpo_core.sweep.rounds import summary as online_summary
from gpo_core.sweep.spec import PATH_FIELDS, JobSpec

FIGURES = {
    "winrate_vs_beta": "Win rate against the reference vs beta (Fig. 8)",
    "winrate_vs_kl": "Win rate against the reference vs KL from it: what following the labels further buys",
    "pairwise": "Pairwise win rates and Bradley-Terry strengths (Fig. 9)",
    "kl_vs_square_loss": "KL vs mu-weighted square loss during training (Fig. 5)",
    "training_curves": "Training curves (smoothed; faint: raw)",
    "held_out": "Held-out pairs during training",
}
EXAMPLES = 3  # prompts shown with the reference's and every run's response
CURVE_KEYS = ("step", "loss", "accuracy", "rho_mean", "margin", "grad_norm")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return records


def outcomes_by_prompt(verdicts: Path) -> dict[str, list[str]]:
    """A run's valid comparison outcomes against the reference, by prompt (its verdicts.jsonl)."""
    by_prompt: dict[str, list[str]] = {}
    for record in _read_metrics(verdicts):
        if record.get("outcome") in ("win", "tie", "loss"):
            by_prompt.setdefault(str(record["prompt_id"]), []).append(record["outcome"])
    return by_prompt


def read_job(job_dir: Path) -> tuple[dict, JobSpec]:
    """A job folder's ``job.json`` and its spec."""
    job = _read_json(job_dir / "job.json")
    if job is None:
        raise FileNotFoundError(f"{job_dir}: not a job folder (no job.json)")
    return job, JobSpec(**job["spec"])


def read_judge_eval(job_dir: Path) -> dict | None:
    """The judge's measured accuracy on labelled pairs (``gpo judge-eval``'s), when the job has one."""
    return _read_json(job_dir / "judge_eval.json")


def read_runs(spec: JobSpec, job_dir: Path) -> tuple[list[dict], dict[str, dict[str, list[str]]], dict[str, dict]]:
    """A job's runs as the report describes them (flags included), each run's outcomes against the
    reference by prompt, and each run's responses (by prompt and sample)."""
    runs: list[dict] = []
    outcomes: dict[str, dict[str, list[str]]] = {}
    for run_id, run in zip(spec.run_ids(), spec.run_list(), strict=True):
        folder = job_dir / "runs" / run_id
        outcomes[run_id] = outcomes_by_prompt(folder / "verdicts.jsonl")
        if spec.rounds(run):
            metrics = round_metrics(spec, job_dir, run_id, _read_metrics)
        else:
            metrics = _read_metrics(folder / "train" / "metrics.jsonl")
        steps = [m for m in metrics if m.get("kind") == "step"]
        traces = [m for m in metrics if m.get("kind") == "trace"]
        judged = _read_json(folder / "judgement.json")
        trained = _read_json(folder / "train.json")
        runs.append(
            {
                "flags": [],
                "id": run_id,
                "loss": run.loss,
                "beta": run.beta,
                "seed": run.seed,
                "mode": run.mode,
                "trained": trained is not None,
                "diverged": trained.get("diverged") if trained else None,
                "steps": trained["steps"] if trained else (steps[-1]["step"] if steps else 0),
                "final_metrics": {k: v for k, v in (steps[-1] if steps else {}).items() if k not in ("kind",)},
                "curve": [{k: s.get(k) for k in CURVE_KEYS} for s in steps],
                "traces": [{k: v for k, v in t.items() if k != "kind"} for t in traces],
                "judgement": None
                if judged is None
                else {
                    k: judged.get(k)
                    for k in (
                        "win_rate",
                        "length_controlled",
                        "flip_rate",
                        "invalid",
                        "mean_length",
                        "mean_gold_reward",
                    )
                },
            }
        )
    # Each run's responses read once: for its flags, the runs that answered alike, and the examples.
    responses = {r["id"]: read_responses(job_dir / "runs" / r["id"] / "responses.jsonl") for r in runs}
    for record in runs:
        texts = [str(r.get("response", "")) for r in responses[record["id"]].values()]
        record["flags"] = degenerate(record, texts) if record["judgement"] else []
    judged_responses = {r["id"]: responses[r["id"]] for r in runs if r["judgement"]}
    for run_id, twins in same_responses(judged_responses).items():
        next(r for r in runs if r["id"] == run_id)["flags"].append(
            f"the same responses as {', '.join(twins)}, so the same verdicts and win rate"
        )
    return runs, outcomes, responses


def decide(runs: list[dict], outcomes: Outcomes, judge_eval: dict | None, wanted: bool) -> dict:
    """What the runs decide: their cells, the differences at equal beta, why nothing can be
    decided (or None) and, when ``wanted``, the claims."""
    cells = group_cells(runs, outcomes)
    found = differences(cells, outcomes)
    why_not = inconclusive(runs, judge_eval)
    return {
        "cells": cells,
        "conclusive": why_not is None,
        "inconclusive": why_not,
        "differences": found,
        "claims": undecided(claims(runs, cells, outcomes, found), why_not) if wanted else [],
    }


def claims_wanted(spec: JobSpec) -> bool:
    """Whether a job's report decides the paper's claims: asked for, or on by default on the built-in task."""
    return spec.comparisons.claims if spec.comparisons.claims is not None else spec.task is not None


def collect(job_dir: str | Path) -> dict:
    """Every number of the report, from the job folder."""
    job_dir = Path(job_dir)
    job, spec = read_job(job_dir)
    runs, outcomes, responses = read_runs(spec, job_dir)
    judge_eval = read_judge_eval(job_dir)
    decided = decide(runs, outcomes, judge_eval, claims_wanted(spec))
    return {
        "name": spec.name,
        "spec": job["spec"],
        "runs": runs,
        **decided,
        "pairwise": _read_json(job_dir / "pairwise.json"),
        "judge_eval": judge_eval,
        "examples": examples(read_responses(job_dir / "reference" / "responses.jsonl"), responses),
        "headline": headline(decided["cells"], runs, outcomes, decided["inconclusive"]),
        "online": online_summary(spec, job_dir, runs, decided["cells"], decided["differences"]),
    }


EMPTY_SHARE = 0.1  # a run with more empty responses than this is flagged
COLLAPSE_RATIO = 0.5  # and one whose mean response is under half the reference's length


def degenerate(run: dict, texts: list[str]) -> list[str]:
    """What makes a run's win rate suspect whatever its number (``texts``: its responses): empty
    responses, or responses collapsed in length against the reference's (a judge may prefer them,
    or the reward may)."""
    flags = []
    empty = sum(not text.strip() for text in texts) / len(texts) if texts else 0.0
    if empty > EMPTY_SHARE:
        flags.append(f"{empty:.0%} of its responses are empty")
    lengths = (run["judgement"] or {}).get("mean_length") or {}
    if lengths.get("b") and lengths.get("a") is not None and lengths["a"] < COLLAPSE_RATIO * lengths["b"]:
        flags.append(
            f"its responses collapsed in length ({lengths['a']:.1f} words against the reference's {lengths['b']:.1f})"
        )
    return flags


def inconclusive(runs: list[dict], judge_eval: dict | None) -> str | None:
    """Why the sweep's win rates cannot decide anything, or None when they can: a judge that told
    nothing apart (every comparison a tie, or no valid verdict), whose verdicts followed the slot
    (a flip rate of at least one half in most runs: flips count as ties, so its win rates sit at
    0.5 whatever the policies do), or whose position bias exceeded its signal on labelled pairs."""
    if judge_eval and judge_eval.get("position_bias_exceeds_signal"):
        bias, signal = judge_eval["position_bias"], judge_eval["signal"]
        return f"on labelled pairs the judge's position bias ({bias:.2f}) exceeds its signal ({signal:.2f})"
    judged = [r["judgement"] for r in runs if r["judgement"]]
    if not judged:
        return "no run was judged (every run diverged)" if runs and all(r.get("diverged") for r in runs) else None
    rates = [j.get("win_rate") for j in judged]
    if all(rate is None for rate in rates):
        return "the judge gave no valid verdict"
    flips = sorted(j["flip_rate"] for j in judged if j.get("flip_rate") is not None)
    if flips and flips[len(flips) // 2] >= 0.5:  # the cause: its flips are counted as ties
        return (
            f"the judge's verdict changed when the responses swapped places in {flips[len(flips) // 2]:.0%} of "
            "the comparisons (median run): its win rates measure its position bias, not the runs"
        )
    if all(rate is None or rate["low"] == rate["high"] == 0.5 for rate in rates):
        return (
            "every comparison was a tie: no run could be told from the reference (the same responses, or a "
            "judge that tells nothing apart)"
        )
    return None


def undecided(found: list[dict], why_not: str | None) -> list[dict]:
    """The claims as decided, or every one "not resolved" when the evidence cannot decide."""
    if why_not is None:
        return found
    return [{**claim, "verdict": UNRESOLVED, "because": why_not} for claim in found]


def same_responses(responses: dict[str, dict]) -> dict[str, list[str]]:
    """Runs whose responses (by run, as :func:`read_responses` reads them) are all the same text as
    another run's, with those runs: two losses that end at the same policy (at one beta, or both
    near the reference) sample the same answers, and identical win-rate rows must not read as a
    coincidence."""
    groups: dict[tuple, list[str]] = {}
    for run, records in responses.items():
        if records:
            texts = tuple(str(records[key].get("response", "")) for key in sorted(records))
            groups.setdefault((tuple(sorted(records)), texts), []).append(run)
    return {
        run: [other for other in group if other != run] for group in groups.values() if len(group) > 1 for run in group
    }


def read_responses(path: Path) -> dict:
    records = _read_metrics(path)  # JSON lines, a line being written skipped
    return {(r["prompt_id"], r.get("sample", 0)): r for r in records if "prompt_id" in r}


def examples(reference: dict, runs: dict[str, dict], count: int = EXAMPLES) -> list[dict]:
    """The first ``count`` prompts with the reference's response and each run's (first sample);
    responses as :func:`read_responses` reads them."""
    shown = []
    for key, record in list(reference.items())[:count]:
        prompt = record["prompt"]
        if isinstance(prompt, list):  # a conversation
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
        shown.append(
            {
                "prompt_id": key[0],
                "prompt": prompt,
                "reference": record["response"],
                "runs": {run: responses[key]["response"] for run, responses in runs.items() if key in responses},
            }
        )
    return shown


def judge_warnings(data: dict) -> list[str]:
    """What makes the win rates meaningless or doubtful, said before any of them is shown."""
    warnings = []
    measured = data.get("judge_eval")
    if measured and measured.get("position_bias_exceeds_signal"):
        warnings.append(
            f"On the labelled pairs the judge was measured on, its position bias ({measured['position_bias']:.2f}) "
            f"exceeds its signal ({measured['signal']:.2f}): its verdicts follow the slot more than the content."
        )
    judged = [r for r in data["runs"] if r["judgement"]]
    if not judged:
        return warnings
    flips = [r["judgement"].get("flip_rate") for r in judged if r["judgement"].get("flip_rate") is not None]
    if flips and max(flips) >= 0.5:
        worst = max(judged, key=lambda r: r["judgement"].get("flip_rate") or 0)
        warnings.append(
            f"The judge changed its verdict when the two responses swapped places in {max(flips):.0%} of the "
            f"comparisons of run {worst['id']} (every run: {min(flips):.0%} to {max(flips):.0%}). A flipped verdict "
            "counts as a tie, so its win rates sit near 0.5 whatever the policies do: they measure the judge's "
            "position bias, not the runs."
        )
    biased = [
        r["id"]
        for r in judged
        if r["judgement"].get("win_rate")
        and 0 < (r["judgement"].get("flip_rate") or 0) < 0.5
        and r["judgement"]["flip_rate"] > 2 * abs(r["judgement"]["win_rate"]["rate"] - 0.5)
    ]
    if biased:
        warnings.append(
            f"In runs {', '.join(biased)} the judge's position bias (flip rate) exceeds its signal "
            "(2 |win rate - 0.5|): more of its verdicts follow the slot than tell the runs apart."
        )
    rates = [r["judgement"].get("win_rate") for r in judged]
    if rates and all(w is not None and w["low"] == w["high"] == 0.5 for w in rates):
        warnings.append(
            "Every comparison was a tie (each win rate is exactly 0.5 with no spread): the judge told no "
            "responses apart."
        )
    invalid = sum(r["judgement"].get("invalid") or 0 for r in judged)
    if invalid:
        no_verdict = [r["id"] for r in judged if r["judgement"].get("win_rate") is None]
        warnings.append(
            f"The judge gave {invalid} invalid verdicts (no verdict after its retries)"
            + (f"; runs without a single valid one: {', '.join(no_verdict)}" if no_verdict else "")
            + "."
        )
    return warnings


def settings_table(data: dict) -> list[dict]:
    """The settings every run shares: training, generation and judge, one row each."""
    spec = data["spec"]

    def shown(value: object) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return text if len(text) <= 80 else text[:77] + "..."

    top = [name for name in PATH_FIELDS if "." not in name]
    rows = [{"setting": key, "value": shown(spec[key])} for key in ("task", *top) if spec.get(key)]
    for block in ("training", "generation", "judge"):
        rows += [{"setting": f"{block}.{key}", "value": shown(value)} for key, value in (spec.get(block) or {}).items()]
    return rows


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _by_loss(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["loss"], []).append(run)
    return {loss: sorted(group, key=lambda r: r["beta"]) for loss, group in groups.items()}


def beta_name(data: dict) -> str:
    """What the spec's betas are: each loss's own beta, or IPO-equivalent units (``beta_units``),
    in which every loss's beta is the one whose Taylor regularization equals IPO's at that beta."""
    units = (data["spec"].get("training") or {}).get("beta_units", "native")
    return "beta (IPO-equivalent units)" if units == "ipo" else "beta"


def plot_winrate_vs_beta(data: dict, path: Path) -> Path | None:
    judged = [c for c in data["cells"] if c["win_rate"]]
    if not judged:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = _by_loss(judged)
    for k, (loss, cells) in enumerate(groups.items()):
        dodge = 10 ** (0.03 * (k - (len(groups) - 1) / 2))  # side by side, not on top of each other
        betas = [c["beta"] * dodge for c in cells]
        rates = [c["win_rate"]["rate"] for c in cells]
        low = [rate - c["win_rate"]["low"] for rate, c in zip(rates, cells, strict=True)]
        high = [c["win_rate"]["high"] - rate for rate, c in zip(rates, cells, strict=True)]
        ax.errorbar(betas, rates, yerr=[low, high], marker="os^vD<>"[k % 7], capsize=3, label=loss, alpha=0.85)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel(beta_name(data))
    ax.set_ylabel("win rate vs reference (ties = 1/2)")
    seeds = max(len(c["runs"]) for c in judged)
    over = f"seeds x prompts bootstrap, {seeds} seeds" if seeds > 1 else "paired bootstrap"
    ax.set_title(f"Win rate against the reference (95% {over}; losses offset in beta)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_winrate_vs_kl(data: dict, path: Path) -> Path | None:
    """The over-optimization curve (Gao et al. 2022): each run's win rate against the reference
    over how far it moved from it, one line per loss from its largest beta to its smallest. A
    curve that rises and then falls is a judge that stops agreeing with the labels the policy
    kept following."""
    points = [c for c in data["cells"] if c["win_rate"] and c["final_kl"] is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, (loss, cells) in enumerate(_by_loss(points).items()):
        ordered = sorted(cells, key=lambda c: -c["beta"])
        kls = [max(c["final_kl"], 0.0) for c in ordered]
        rates = [c["win_rate"]["rate"] for c in ordered]
        low = [rate - c["win_rate"]["low"] for rate, c in zip(rates, ordered, strict=True)]
        high = [c["win_rate"]["high"] - rate for rate, c in zip(rates, ordered, strict=True)]
        ax.errorbar(kls, rates, yerr=[low, high], marker="os^vD<>"[k % 7], capsize=3, label=loss, alpha=0.85)
        for x, y, cell in zip(kls, rates, ordered, strict=True):
            ax.annotate(f"{cell['beta']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("symlog", linthresh=min((x for c in points if (x := c["final_kl"]) > 0), default=1e-2))
    ax.set_xlabel("final KL(pi || pi_ref) (sampled); points labelled with beta")
    ax.set_ylabel("win rate vs reference (ties = 1/2)")
    ax.set_title("Win rate against KL from the reference (95% intervals)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_pairwise(data: dict, path: Path) -> Path | None:
    pairwise = data["pairwise"]
    if not pairwise:
        return None
    labels = pairwise["losses"]
    matrix = [[math.nan if v is None else v for v in row] for row in pairwise["win_rate"]]
    # The colour bar has an axis of its own between the panels: drawn on the matrix's, its labels
    # ran into the Bradley-Terry panel's names.
    fig, (left, bar, right) = plt.subplots(
        1, 3, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.2, 0.05, 1], "wspace": 0.45}
    )
    image = left.imshow(matrix, vmin=0, vmax=1, cmap="RdBu")
    left.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    left.set_yticks(range(len(labels)), labels, fontsize=8)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if not math.isnan(value):
                left.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    left.set_title(f"row beats column, {beta_name(data)} = {pairwise['beta']:g}")
    fig.colorbar(image, cax=bar, label="win rate")
    strengths = pairwise.get("bradley_terry")
    if strengths:
        s = strengths["strength"]
        errors = [
            [v - lo for v, lo in zip(s, strengths["low"], strict=True)],
            [hi - v for v, hi in zip(s, strengths["high"], strict=True)],
        ]
        right.errorbar(s, range(len(s)), xerr=errors, fmt="o", capsize=3)
        right.set_yticks(range(len(labels)), labels, fontsize=8)
        right.axvline(0, color="grey", linewidth=0.8, linestyle=":")
        right.set_xlabel(f"Bradley-Terry log-strength (relative to {labels[0]})")
        right.invert_yaxis()
    return _save(fig, path)


def plot_kl_vs_square_loss(data: dict, path: Path) -> Path | None:
    """Symmetric-log axes, linear near 0: every trace point is drawn, an estimate at or below 0
    (sampling noise of the KL near the start) included."""
    traced = [r for r in data["runs"] if any("kl" in t and "square_loss" in t for t in r["traces"])]
    if not traced:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    smallest = []
    for k, (loss, runs) in enumerate(_by_loss(traced).items()):
        for m, run in enumerate(runs):
            points = [(t["square_loss"], t["kl"]) for t in run["traces"] if "kl" in t and "square_loss" in t]
            xs, ys = zip(*points, strict=True)
            smallest += [abs(v) for v in (*xs, *ys) if v]
            ax.plot(
                xs,
                ys,
                marker="os^vD<>"[m % 7],
                linestyle=("-", "--", ":", "-.")[m % 4],
                color=colours[k % len(colours)],
                alpha=0.8,
                label=f"{loss}, beta={run['beta']:g}",
            )
    # Linear within the smallest decade that matters (4 below the largest value): the start of
    # training (0, up to float noise) sits at the origin instead of stretching the axes.
    largest = max(smallest, default=1.0)
    threshold = min((v for v in smallest if v >= largest * 1e-4), default=1e-3)
    ax.set_xscale("symlog", linthresh=threshold)
    ax.set_yscale("symlog", linthresh=threshold)
    ax.set_xlabel("mu-weighted square loss E[rho^2]/2 (held-out pairs)")
    ax.set_ylabel("KL(pi || pi_ref) (sampled)")
    ax.set_title(f"Offline regularizer vs on-policy KL (log axes, linear below {threshold:.1g})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # beside, not on, the data
    return _save(fig, path)


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), skipping missing values."""
    out, state = [], None
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(math.nan)
            continue
        state = value if state is None else weight * state + (1 - weight) * value
        out.append(state)
    return out


def robust_limits(values: list[float]) -> tuple[float, float] | None:
    """The 1st to 99th percentile, padded: a few spikes (a loss of 1e5 at one step) stay off the
    scale instead of flattening every other value into a line."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if len(finite) < 10:
        return None
    low, high = finite[len(finite) // 100], finite[-1 - len(finite) // 100]
    pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
    return low - pad, high + pad


def plot_training_curves(data: dict, path: Path) -> Path | None:
    runs = [r for r in data["runs"] if r["curve"]]
    if not runs:
        return None
    groups = _by_loss(runs)
    keys = (("loss", "training loss E[f(beta rho)]"), ("accuracy", "accuracy (rho > 0)"), ("margin", "reward margin"))
    fig, axes = plt.subplots(len(groups), 3, figsize=(14, 3.2 * len(groups)), squeeze=False)
    for row, (loss, group) in zip(axes, groups.items(), strict=True):
        for col, (ax, (key, title)) in enumerate(zip(row, keys, strict=True)):
            everything = []
            for run in group:
                steps = [p["step"] for p in run["curve"]]
                raw = [p.get(key) for p in run["curve"]]
                everything += raw
                (line,) = ax.plot(steps, smooth(raw), linewidth=1.2, label=f"beta={run['beta']:g}")
                ax.plot(
                    steps,
                    [math.nan if v is None else v for v in raw],
                    linewidth=0.5,
                    alpha=0.25,
                    color=line.get_color(),
                )
            if (limits := robust_limits(everything)) is not None:
                ax.set_ylim(*limits)
            ax.set_title(f"{loss}: {title}", fontsize=9)
            ax.set_xlabel("step")
            if col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_held_out(data: dict, path: Path) -> Path | None:
    """Accuracy and mean rho on the held-out pairs at each trace, one line per run."""
    runs = [r for r in data["runs"] if any("eval_accuracy" in t for t in r["traces"])]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # A colour per loss, and per beta of that loss a marker and line style (as in Fig. 5).
    for k, (loss, group) in enumerate(_by_loss(runs).items()):
        for m, run in enumerate(group):
            traces = [t for t in run["traces"] if "eval_accuracy" in t]
            steps = [t["step"] for t in traces]
            style = {
                "color": colours[k % len(colours)],
                "marker": "os^vD<>"[m % 7],
                "linestyle": ("-", "--", ":", "-.")[m % 4],
                "markersize": 3,
            }
            label = f"{loss}, beta={run['beta']:g}"
            axes[0].plot(steps, [t["eval_accuracy"] for t in traces], label=label, **style)
            axes[1].plot(steps, [t["eval_rho_mean"] for t in traces], label=label, **style)
    axes[0].set_title("held-out accuracy (rho > 0)")
    axes[1].set_title("held-out mean rho (log-ratio margin)")
    for ax in axes:
        ax.set_xlabel("step")
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _save(fig, path)


PLOTTERS = {
    "winrate_vs_beta": plot_winrate_vs_beta,
    "winrate_vs_kl": plot_winrate_vs_kl,
    "pairwise": plot_pairwise,
    "kl_vs_square_loss": plot_kl_vs_square_loss,
    "training_curves": plot_training_curves,
    "held_out": plot_held_out,
}


def _peak_numbers(found: dict) -> str:
    """One loss's C1 figures: the best beta in [0.1, 1] against the best outside, over seeds, or
    the share of bootstrap resamples peaking in [0.1, 1] (one seed a cell)."""
    if "why" in found:
        return f"{found['loss']}: {found['why']}"
    if found.get("method") == "seeds":
        return (
            f"{found['loss']}: argmax {found['argmax_beta']:g}; best in [0.1, 1] ({found['best_inside']:g}) minus "
            f"best outside ({found['best_outside']:g}) {found['difference']:+.3f} "
            f"[{found['low']:+.3f}, {found['high']:+.3f}]"
        )
    return f"{found['loss']}: argmax {found['argmax_beta']:g}, {found['share_in_range']:.2f} of resamples in [0.1, 1]"


def claims_rows(data: dict) -> list[dict]:
    """The claims table: each claim, the numbers that decide it, and the verdict."""
    rows = []
    for claim in data.get("claims") or []:
        if claim["claim"] == "C1":
            numbers = "; ".join(_peak_numbers(p) for p in claim["per_loss"])
        elif claim["claim"] == "C2":
            widest, apart = claim.get("widest"), claim.get("apart")
            bounds = "" if widest is None else f"every interval within +-{widest:.3f}"
            if apart is not None:  # the gap shown, at least: above the margin, the losses are not on par
                bounds += f", a gap of at least {apart:.3f} shown" if apart > 0 else ", no gap shown"
            bounds += f" (margin {EQUIVALENCE_MARGIN:g})"
            if "why" in claim:
                numbers = claim["why"]
            elif claim.get("method") == "seeds":
                (df1, df2), f = claim["dof"], claim["f"]
                numbers = (
                    f"{claim['pairs']} pairs at beta 0.1: {bounds}; "
                    f"differ at all: F({df1}, {df2}) = {f:.2f}, p {claim['p']:.3f}"
                )
            elif not claim["pairs"]:
                numbers = "no judged pairs at beta 0.1"
            else:
                numbers = f"{claim['pairs']} pairs at beta 0.1: {bounds}; {claim['resolved_pairs']} exclude 0"
        elif claim["claim"] == "C3":
            parts = [
                f"{p['loss']}: rho(beta, KL) {p['rho_beta_kl']:+.2f} (p {p['p_kl']:.3f}), "
                f"rho(beta, square loss) {p['rho_beta_square_loss']:+.2f} (p {p['p_square_loss']:.3f})"
                if "rho_beta_kl" in p
                else f"{p['loss']}: {p['why']}"
                for p in claim["per_loss"]
            ]
            if claim["across_runs"]:
                across = claim["across_runs"]
                parts.append(
                    f"across runs rho(KL, square loss) {across['rho_kl_square_loss']:+.2f} (p {across['p']:.3f})"
                )
            numbers = "; ".join(parts) or "no KL and square-loss traces"
        else:
            numbers = f"case II closer at {claim['closer']} of {claim['betas']} betas (sign test)"
        rows.append(
            {"claim": claim["claim"], "statement": claim["statement"], "numbers": numbers, "verdict": claim["verdict"]}
        )
    return rows


def _interval(value: dict | None) -> str:
    if not value:
        return "-"
    return f"{value['rate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def winrate_table(data: dict) -> list[dict]:
    """One row per run, the best win rate against the reference first (runs not judged, and those
    that diverged, last): the numbers a reader wants first, and what makes a run suspect."""
    rows = []

    def rank(run: dict) -> float:
        rate = (run["judgement"] or {}).get("win_rate")
        return -rate["rate"] if rate and not run.get("diverged") else 1.0

    for run in sorted(data["runs"], key=rank):
        j = run["judgement"] or {}
        traces = [t for t in run["traces"] if "kl" in t or "square_loss" in t]
        last = traces[-1] if traces and not run.get("diverged") else {}  # a diverged run has no final trace
        rows.append(
            {
                "run": run["id"],
                "loss": run["loss"],
                "beta": run["beta"],
                "steps": run["steps"],
                "win_rate": "diverged" if run.get("diverged") else _interval(j.get("win_rate")),
                "length_controlled": _interval(j.get("length_controlled")),
                "flip_rate": f"{j['flip_rate']:.3f}" if j.get("flip_rate") is not None else "-",
                "invalid": j.get("invalid", "-"),
                "mean_length": f"{j['mean_length']['a']:.1f}" if j.get("mean_length") else "-",
                "gold_reward": f"{j['mean_gold_reward']['a']:.3f}" if j.get("mean_gold_reward") else "-",
                "kl": f"{last['kl']:.3f}" if "kl" in last else "-",
                "square_loss": f"{last['square_loss']:.3f}" if "square_loss" in last else "-",
                "notes": "; ".join(run.get("flags") or []) or "-",
            }
        )
    return rows


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def cells_table(data: dict) -> list[dict]:
    """One row per cell (a loss at a beta over its seeds), the best win rate first."""
    rows = []
    for cell in sorted(data["cells"], key=lambda c: -c["win_rate"]["rate"] if c["win_rate"] else 1.0):
        rows.append(
            {
                "cell": cell["id"],
                "loss": cell["loss"],
                "beta": cell["beta"],
                "seeds judged": f"{len(cell['judged'])} of {len(cell['runs'])}",
                "win_rate": _interval(cell["win_rate"]),
                "seed share": _share((cell["win_rate"] or {}).get("seed_share")),
                "mean final kl": f"{cell['final_kl']:.3f}" if cell["final_kl"] is not None else "-",
                "notes": "; ".join(cell["flags"]) or "-",
            }
        )
    return rows


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("gpo_core.sweep", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )


def render_html(data: dict, figures: dict[str, Path]) -> str:
    """The report page (``templates/report.html``, autoescaped: every text a tenant's data or spec
    put there is escaped), with the figures inlined: one self-contained file."""

    reference_length = next(
        (r["judgement"]["mean_length"]["b"] for r in data["runs"] if r["judgement"] and r["judgement"]["mean_length"]),
        None,
    )
    measured = data.get("judge_eval")
    judge_eval = None
    if measured:
        agreement = measured.get("agreement") or {}
        judge_eval = [
            {
                "pairs": measured["pairs"],
                "agreement with labels": _interval(agreement) if agreement else "-",
                "agreement with gold": f"{measured['gold_agreement']:.3f}" if measured.get("gold_agreement") else "-",
                "position bias": f"{measured['position_bias']:.3f}",
                "ties": f"{measured['tie_rate']:.3f}",
                "invalid": f"{measured['invalid_rate']:.3f}",
            }
        ]
    seeded = bool(data.get("cells_table"))
    differences = [
        {
            beta_name(data): f"{d['beta']:g}",
            "A": f"{d['a']} ({d['loss_a']})",
            "B": f"{d['b']} ({d['loss_b']})",
            "win rate A - B": f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
            **({"seeds": d["seeds"], "seed share": _share(d.get("seed_share"))} if seeded else {}),
            "resolved": ("A better" if d["low"] > 0 else "B better") if d["resolved"] else "no",
        }
        for d in data.get("differences") or []
    ]
    pairwise = data["pairwise"] or {}
    bradley_terry = []
    if pairwise.get("bradley_terry"):
        bt = pairwise["bradley_terry"]
        columns = zip(pairwise["runs"], pairwise["losses"], bt["strength"], bt["low"], bt["high"], strict=True)
        bradley_terry = [
            {"run": run, "loss": loss, "strength": f"{s:.3f}", "95% interval": f"[{lo:.3f}, {hi:.3f}]"}
            for run, loss, s, lo, hi in columns
        ]
    examples = []
    for example in data.get("examples", []):
        rows = [{"policy": "reference", "response": example["reference"]}]
        rows += [{"policy": run, "response": text} for run, text in example["runs"].items()]
        examples.append({"prompt_id": example["prompt_id"], "prompt": example["prompt"][:2000], "rows": rows})
    return (
        _templates()
        .get_template("report.html")
        .render(
            name=data["name"],
            inconclusive=data.get("inconclusive"),
            headline=(data.get("headline") or {}).get("text"),
            warnings=data.get("warnings", []),
            reference_length=reference_length,
            cells=data.get("cells_table") or [],
            runs=winrate_table(data),
            diverged=[run for run in data["runs"] if run.get("diverged")],
            judge_eval=judge_eval,
            claims=claims_rows(data) if data.get("claims") else [],
            differences=differences,
            bradley_terry=bradley_terry,
            bradley_terry_beta=f"{pairwise['beta']:g}" if bradley_terry else "",
            figures=[
                {"name": name, "title": FIGURES[name], "png": base64.b64encode(path.read_bytes()).decode("ascii")}
                for name, path in figures.items()
            ],
            examples=examples,
            settings=settings_table(data),
            online=online_tables(data),
        )
    )


def _number(value: object) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _round_cell(value: object) -> str:
    """A number of a round's row, or a win rate with its interval."""
    if isinstance(value, dict) and "rate" in value:
        return f"{value['rate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
    return _number(value)


def online_tables(data: dict) -> dict | None:
    """The online part of the page: each online run's rounds, and online against offline."""
    online = data.get("online")
    if not online:
        return None
    versus = [
        {
            "loss": d["loss"],
            beta_name(data): f"{d['beta']:g}",
            "online": d["online"],
            "offline (same budget)": d["offline"],
            "win rate online - offline": f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
            "resolved": ("online better" if d["low"] > 0 else "offline better") if d["resolved"] else "no",
        }
        for d in online["versus_offline"]
    ]
    rounds = {
        run: [{k: _round_cell(v) for k, v in row.items()} for row in rows] for run, rows in online["rounds"].items()
    }
    return {"budget": online, "versus": versus, "rounds": rounds}


def build_report(job_dir: str | Path) -> Path:
    """Write ``JOB/report/{report.json, report.html, *.png}``; returns the HTML's path."""
    job_dir = Path(job_dir)
    out = job_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = collect(job_dir)
    figures = {}
    for name, plot in PLOTTERS.items():
        written = plot(data, out / f"{name}.png")
        if written is not None:
            figures[name] = written
    data["table"] = winrate_table(data)
    data["cells_table"] = cells_table(data) if any(len(c["runs"]) > 1 for c in data["cells"]) else []
    data["warnings"] = judge_warnings(data)
    data["settings"] = settings_table(data)
    data["figures"] = {name: path.name for name, path in figures.items()}
    write_json(out / "report.json", data)
    page = out / "report.html"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(render_html(data, figures), encoding="utf-8")
    tmp.replace(page)
    return page
