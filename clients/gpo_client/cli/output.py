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
    rows = json.loads(report_json.read_text(encoding="utf-8"))["table"]
    table = Table(title="Win rate against the reference (95% paired bootstrap over prompts)")
    columns = ("run", "win_rate", "length_controlled", "flip_rate", "gold_reward", "kl", "square_loss")
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        table.add_row(*(str(row[column]) for column in columns))
    console.print(table)
