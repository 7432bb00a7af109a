"""The local stack and the demo: ``gpo up``, ``gpo down``, ``gpo demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpo_client.cli.jobs import run_table
from gpo_client.cli.output import console, fail, print_winrate_table

StackDirOption = Annotated[
    Path | None, typer.Option("--dir", help="Stack folder (default: $GPO_STACK_DIR or ~/.gpo/stack).")
]


def up_command(
    directory: StackDirOption = None,
    port: Annotated[int | None, typer.Option(help="Control service port (default: a free one).")] = None,
) -> None:
    """Start the local stack: a private redis-server, the control service and the trainer,
    generator and judge workers on loopback (logs in DIR/logs)."""
    from gpo_client.stack import StackError, start_stack

    try:
        stack = start_stack(directory, port)
    except StackError as err:
        raise fail(str(err)) from None
    console.print(
        f"control service: {stack['server']}\nlogs: {stack['logs']}\nartifacts: {stack['artifacts']}", highlight=False
    )
    console.print("the gpo commands find this stack by themselves; for other clients (curl, the SDK elsewhere):")
    exports = f"export GPO_SERVER={stack['server']} GPO_API_KEY={stack['api_key']}"
    console.print(exports, highlight=False, soft_wrap=True)


def down_command(directory: StackDirOption = None) -> None:
    """Stop the local stack (workers finish or hand back their task first)."""
    from gpo_client.stack import stop_stack

    stopped = stop_stack(directory)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no stack was running")


def demo_command(
    out: Annotated[Path, typer.Option(help="Where the report and the demo's spec are written.")] = Path("outputs/demo"),
    size: Annotated[str, typer.Option(help="Built-in task size: small or default.")] = "small",
    steps: Annotated[int, typer.Option(min=4, help="Training steps per run.")] = 100,
    workers: Annotated[int, typer.Option(min=0, help="Ray Train workers per run (0: in the trainer).")] = 1,
    seed: Annotated[
        int, typer.Option(min=0, help="Training seed: another one shows how much the outcome owes to chance.")
    ] = 0,
    directory: StackDirOption = None,
    down: Annotated[bool, typer.Option("--down", help="Stop the local stack at the end.")] = False,
) -> None:
    """The end-to-end demo: build the task, start the local stack if none runs, submit all six
    losses x beta in {0.1, 1, 10} (Ray Train, vLLM generation, oracle judge), watch, report."""
    from gpo_client.demo import run_demo
    from gpo_client.stack import StackError, stop_stack

    try:
        job, report, seconds = run_demo(out, size, steps, workers, directory, console.print, seed)
    except StackError as err:
        raise fail(str(err)) from None
    finally:
        stopped = stop_stack(directory) if down else []
    console.print(run_table(job))
    if report is None:
        raise fail(f"the demo job ended {job.state}: {job.reason}")
    print_winrate_table(report.with_name("report.json"))
    stack = f"stack stopped ({', '.join(stopped)})" if down else "the stack keeps running: gpo down stops it"
    console.print(f"demo wall time: {seconds:.0f} s; {stack}\nreport: {report}", highlight=False)
    if job.state != "succeeded":
        raise typer.Exit(code=1)  # inconclusive: the report says why
