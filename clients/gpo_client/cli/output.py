"""What every command prints with: the consoles, one-line errors, JSON output and the tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)  # tables unwrapped in logs
errors = Console(stderr=True, soft_wrap=True)  # messages carry paths: never wrap them

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
PlotOption = Annotated[Path | None, typer.Option("--plot", help="Also draw the figure to this PNG file.")]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; raise the returned Exit (code 2) to stop the command."""
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=2)


def emit_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def print_winrate_table(report_json: Path) -> None:
    """A sweep report's run table, as a terminal table."""
    report = json.loads(report_json.read_text(encoding="utf-8"))
    if (report.get("headline") or {}).get("text"):
        console.print(report["headline"]["text"], highlight=False)
    if report.get("inconclusive"):
        errors.print(
            f"inconclusive: {report['inconclusive']}; no loss or beta can be chosen from these win rates",
            highlight=False,
        )
    if report.get("cells_table"):  # several seeds per loss x beta: one row per cell, not per run
        rows = report["cells_table"]
        title = "Win rate against the reference, over seeds (95% seed x prompt bootstrap)"
        columns: tuple[str, ...] = ("cell", "seeds judged", "win_rate", "seed share", "mean final kl", "notes")
    else:
        rows = report["table"]
        title = "Win rate against the reference (95% paired bootstrap over prompts)"
        columns = ("run", "win_rate", "length_controlled", "flip_rate", "gold_reward", "kl", "square_loss")
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "cell", "notes") else "right")
    for row in rows:
        table.add_row(*(str(row[column]) for column in columns))
    console.print(table)
    print_differences(report.get("differences") or [])
    print_online(report.get("online"))
    print_claims(report.get("claims") or [])


def print_online(online: dict | None) -> None:
    """An online job's answer: each online cell against its offline twin on the same budget."""
    if not online:
        return
    budget = f"{online['judged_pairs_per_run']} judged pairs and {online['steps_per_run']} steps per run"
    for d in online["versus_offline"]:
        verdict = ("online better" if d["low"] > 0 else "offline better") if d["resolved"] else "not resolved"
        console.print(
            f"online - offline, {d['loss']} at beta {d['beta']:g} ({budget}): "
            f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], {verdict}",
            highlight=False,
        )


def print_claims(claims: list[dict]) -> None:
    """The paper's claims and this sweep's verdict on each (report.html has the numbers)."""
    for claim in claims:
        console.print(f"{claim['claim']} {claim['verdict']}: {claim['statement']}", highlight=False)


def print_differences(differences: list[dict], most: int = 10) -> None:
    """Which runs at equal beta the data tells apart (paired intervals that exclude 0)."""
    if not differences:
        return
    resolved = [d for d in differences if d["resolved"]]
    if not resolved:
        console.print(
            f"No difference between runs at equal beta is resolved ({len(differences)} pairs compared; "
            "95% paired intervals all include 0)."
        )
        return
    console.print(f"Resolved differences at equal beta ({len(resolved)} of {len(differences)} pairs):")
    for d in sorted(resolved, key=lambda d: -abs(d["difference"]))[:most]:
        better, worse = (d["a"], d["b"]) if d["difference"] > 0 else (d["b"], d["a"])
        low, high = sorted((abs(d["low"]), abs(d["high"])))
        by = f"{abs(d['difference']):.3f} [{low:.3f}, {high:.3f}]"
        console.print(f"  beta {d['beta']:g}: {better} beats {worse} by {by}")
    if len(resolved) > most:
        console.print(f"  and {len(resolved) - most} more (report.json: differences)")
