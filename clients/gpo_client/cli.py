"""The ``gpo`` command line: the research commands of ``gpo_core`` (run in this process) plus the
platform's: submit, list, status, watch, cancel and report jobs over HTTP; up / down the local
stack; demo. The server and key come from --server / --api-key, $GPO_SERVER / $GPO_API_KEY, or
the local stack started by ``gpo up``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpo_core.cli import _fail, app, console, print_winrate_table

ServerOption = Annotated[str | None, typer.Option("--server", help="Control service URL.")]
KeyOption = Annotated[str | None, typer.Option("--api-key", help="API key (default: $GPO_API_KEY).")]
StackDirOption = Annotated[
    Path | None, typer.Option("--dir", help="Stack folder (default: $GPO_STACK_DIR or ~/.gpo/stack).")
]


def _client(server: str | None, api_key: str | None):
    from gpo_client.sdk import Client

    return Client(server, api_key)


def _api_call(function, *args):
    """Run an SDK call; API and connection errors become one-line messages."""
    import httpx

    from gpo_client.sdk import ApiError

    try:
        return function(*args)
    except ApiError as err:
        details = "".join(f"\n  {d.get('field') or '-'}: {d['message']}" for d in err.details)
        raise _fail(f"{err.status} {err.code}: {err.message}{details}") from None
    except httpx.HTTPError as err:
        raise _fail(f"cannot reach the control service ({err}); is it running? (gpo up)") from None


def _job_table(jobs) -> Table:
    table = Table()
    for column in ("job", "name", "state", "runs", "created"):
        table.add_column(column)
    for job in jobs:
        done = sum(run.state == "succeeded" for run in job.runs)
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
        table.add_row(job.id, job.name, job.state, f"{done}/{len(job.runs)}", created)
    return table


def _run_table(job) -> Table:
    table = Table(title=f"job {job.id} ({job.name}): {job.state}" + (f" - {job.reason}" if job.reason else ""))
    for column in ("run", "state", "stage", "step", "win rate vs reference"):
        table.add_column(column)
    for run in job.runs:
        rate = run.win_rate
        shown = f"{rate['rate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]" if rate else "-"
        table.add_row(run.id, run.state, run.stage, f"{run.step}/{run.steps}", shown)
    return table


@app.command("submit")
def submit_command(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON).")],
    server: ServerOption = None,
    api_key: KeyOption = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Makes a retried submission safe.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it is over.")] = False,
) -> None:
    """Submit a sweep to the control service; prints the job id."""
    from gpo_core.sweep.spec import JobSpecError

    client = _client(server, api_key)
    try:
        job = _api_call(client.submit, spec_file, idempotency_key)
    except JobSpecError as err:
        raise _fail(str(err)) from None
    console.print(job.id)
    if watch:
        job = _api_call(lambda: client.wait(job.id, progress=True))
        console.print(_run_table(job))


@app.command("list")
def list_command(
    state: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    server: ServerOption = None,
    api_key: KeyOption = None,
) -> None:
    """Your jobs, newest first."""
    page = _api_call(_client(server, api_key).list, state, 0, limit)
    console.print(_job_table(page.jobs))


@app.command("status")
def status_command(job_id: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """A job's state and each run's stage, progress and win rate."""
    console.print(_run_table(_api_call(_client(server, api_key).get, job_id)))


@app.command("watch")
def watch_command(job_id: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Live progress bars per run and stage until the job is over."""
    client = _client(server, api_key)
    job = _api_call(lambda: client.wait(job_id, progress=True))
    console.print(_run_table(job))
    if job.state != "succeeded":
        raise typer.Exit(code=1)


@app.command("cancel")
def cancel_command(job_id: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Cancel a job: its training stops at the next step, queued work is skipped."""
    job = _api_call(_client(server, api_key).cancel, job_id)
    console.print(f"job {job.id}: {job.state}")


@app.command("report")
def report_command(
    target: Annotated[str, typer.Argument(help="A job folder (built here) or a job id (downloaded).")],
    out: Annotated[Path | None, typer.Option(help="Where to save a downloaded report.")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML report in a browser.")] = False,
    server: ServerOption = None,
    api_key: KeyOption = None,
) -> None:
    """A sweep's report. From a job folder: (re)built from its artifacts (report.html, report.json,
    figures). From a job id: downloaded from the control service to outputs/reports/ID/."""
    if Path(target).is_dir():
        from gpo_core.sweep.report import build_report

        try:
            page = build_report(target)
        except FileNotFoundError as err:
            raise _fail(str(err)) from None
    else:
        client = _client(server, api_key)
        page = _api_call(client.download_report, target, out or Path("outputs") / "reports" / target / "report.html")
    print_winrate_table(page.with_name("report.json"))
    console.print(f"report: {page}")
    if open_browser:
        import webbrowser

        webbrowser.open(page.resolve().as_uri())


@app.command("up")
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
        raise _fail(str(err)) from None
    console.print(f"control service: {stack['server']}\nlogs: {stack['logs']}\nartifacts: {stack['artifacts']}")
    console.print("the gpo commands find this stack by themselves; other clients: GPO_SERVER and GPO_API_KEY")


@app.command("down")
def down_command(directory: StackDirOption = None) -> None:
    """Stop the local stack (workers finish or hand back their task first)."""
    from gpo_client.stack import stop_stack

    stopped = stop_stack(directory)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no stack was running")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Where the report and the demo's spec are written.")] = Path("outputs/demo"),
    size: Annotated[str, typer.Option(help="Built-in task size: small or default.")] = "small",
    steps: Annotated[int, typer.Option(min=4, help="Training steps per run.")] = 100,
    workers: Annotated[int, typer.Option(min=0, help="Ray Train workers per run (0: in the trainer).")] = 1,
    directory: StackDirOption = None,
) -> None:
    """The end-to-end demo: build the task, start the local stack if none runs, submit all six
    losses x beta in {0.1, 1, 10} (Ray Train, vLLM generation, oracle judge), watch, report."""
    from gpo_client.demo import run_demo
    from gpo_client.stack import StackError

    try:
        job, report, seconds = run_demo(out, size, steps, workers, directory, console.print)
    except StackError as err:
        raise _fail(str(err)) from None
    console.print(_run_table(job))
    if report is None:
        raise _fail(f"the demo job ended {job.state}: {job.reason}")
    print_winrate_table(report.with_name("report.json"))
    console.print(f"report: {report}\ndemo wall time: {seconds:.0f} s (the stack keeps running: gpo down stops it)")


def main() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    app()


if __name__ == "__main__":
    main()
