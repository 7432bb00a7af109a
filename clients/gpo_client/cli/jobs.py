"""Jobs on the control service, over HTTP: submit, list, status, watch, cancel, report. The server
and key come from --server / --api-key, $GPO_SERVER / $GPO_API_KEY, or the local stack started by
``gpo up``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpo_client.cli.output import console, errors, fail, print_winrate_table

ServerOption = Annotated[str | None, typer.Option("--server", help="Control service URL.")]
KeyOption = Annotated[str | None, typer.Option("--api-key", help="API key (default: $GPO_API_KEY).")]


def sdk_client(server: str | None, api_key: str | None):
    from gpo_client.sdk import Client

    return Client(server, api_key)


def api_call(function, *args):
    """Run an SDK call; API and connection errors become one-line messages."""
    import httpx

    from gpo_client.sdk import ApiError

    try:
        return function(*args)
    except ApiError as err:
        if err.details:  # the message joins them: each said once, on a line of its own
            lines = "".join(f"\n  {d.get('field') or '-'}: {d['message']}" for d in err.details)
            raise fail(f"{err.status} {err.code}:{lines}") from None
        raise fail(f"{err.status} {err.code}: {err.message}") from None
    except httpx.HTTPError as err:
        raise fail(f"cannot reach the control service ({err}); is it running? (gpo up)") from None


def job_table(jobs) -> Table:
    from gpo_core.sweep.pipeline import DONE

    table = Table()
    for column in ("job", "name", "state", "runs", "created"):
        table.add_column(column)
    for job in jobs:
        done = sum(run.state in DONE for run in job.runs)
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
        table.add_row(job.id, job.name, job.state, f"{done}/{len(job.runs)}", created)
    return table


def run_table(job) -> Table:
    table = Table(title=f"job {job.id} ({job.name}): {job.state}" + (f" - {job.reason}" if job.reason else ""))
    for column in ("run", "state", "stage", "step", "win rate vs reference"):
        table.add_column(column)
    for run in job.runs:
        rate = run.win_rate
        shown = f"{rate['rate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]" if rate else "-"
        table.add_row(run.id, run.state, run.stage, f"{run.step}/{run.steps}", shown)
    return table


def submit_command(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON).")],
    server: ServerOption = None,
    api_key: KeyOption = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Makes a retried submission safe.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it is over.")] = False,
) -> None:
    """Submit a sweep to the control service; prints the job id. With --watch, follows it and exits
    0 only when it succeeded (1 when it failed, was cancelled or is inconclusive: its judge could
    tell nothing apart; 2 on an error here)."""
    from gpo_core.notes import spec_notes
    from gpo_core.sweep.spec import load_job_spec

    client = sdk_client(server, api_key)
    spec = load_job_spec(spec_file)  # read once: its notes here, then the request body
    for note in spec_notes(spec):  # what `gpo run` says too
        errors.print(f"note: {note}", highlight=False)
    job = api_call(client.submit, spec, idempotency_key)
    console.print(job.id)
    if watch:
        job = api_call(lambda: client.wait(job.id, progress=True))
        finished(job, client)


def list_command(
    state: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    server: ServerOption = None,
    api_key: KeyOption = None,
) -> None:
    """Your jobs, newest first."""
    page = api_call(sdk_client(server, api_key).list, state, 0, limit)
    console.print(job_table(page.jobs))


def status_command(job_id: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """A job's state and each run's stage, progress and win rate."""
    console.print(run_table(api_call(sdk_client(server, api_key).get, job_id)))


def watch_command(job_id: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Live progress bars per run and stage until the job is over; exits 0 only when it succeeded."""
    client = sdk_client(server, api_key)
    job = api_call(lambda: client.wait(job_id, progress=True))
    finished(job, client)


def finished(job, client) -> None:
    """A job that is over: its runs, the report's headline (what `gpo run` and `gpo demo` print
    too), and how to read the whole report; exit 1 unless it succeeded."""
    console.print(run_table(job))
    if job.state == "succeeded":
        headline = (api_call(client.report_json, job.id).get("headline") or {}).get("text")
        if headline:
            console.print(headline, highlight=False)
    if job.state == "inconclusive":
        errors.print(f"inconclusive: {job.reason}; no loss or beta can be chosen from these win rates", highlight=False)
    if job.state in ("succeeded", "inconclusive"):
        console.print(f"report: gpo report {job.id} --open", highlight=False)
    if job.state != "succeeded":
        raise typer.Exit(code=1)


def cancel_command(job_id: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Cancel a job: its training stops at the next step, queued work is skipped."""
    job = api_call(sdk_client(server, api_key).cancel, job_id)
    console.print(f"job {job.id}: {job.state}")


def delete_command(job_id: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Delete a finished job: its models, samples and report on the server, and its records."""
    api_call(sdk_client(server, api_key).delete, job_id)
    console.print(f"job {job_id}: deleted")


def report_command(
    target: Annotated[str, typer.Argument(help="A job folder (built here) or a job id (downloaded).")],
    out: Annotated[
        Path | None, typer.Option(help="Folder to save a downloaded report in (default: outputs/reports/ID).")
    ] = None,
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
            raise fail(str(err)) from None
    else:
        client = sdk_client(server, api_key)
        folder = out or Path("outputs") / "reports" / target
        if folder.exists() and not folder.is_dir():
            raise fail(f"--out {folder}: a file; give a folder (report.html and report.json are written in it)")
        page = api_call(client.download_report, target, folder / "report.html")
    print_winrate_table(page.with_name("report.json"))
    console.print(f"report: {page}")
    if open_browser:
        import webbrowser

        if not webbrowser.open(page.resolve().as_uri()):
            errors.print(f"no browser to open here: open {page.resolve()} where you have one", highlight=False)
