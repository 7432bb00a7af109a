"""The ``gpo`` command line, assembled in one place: every command and group is registered here,
from the module that holds it. Commands import their heavy libraries (torch, transformers, Ray)
when they run, not when ``gpo`` starts."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from gpo_client.cli import analysis, data, jobs, judging, runs, stack

app = typer.Typer(
    help="Generalized Preference Optimization: losses, analyses, training, sweeps and the platform's jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The paper's analyses (computed here).
app.command("losses")(analysis.losses)
app.command("bandit")(analysis.bandit)
app.command("gaussians")(analysis.gaussians)
app.command("paper")(analysis.paper)

# The built-in task and datasets.
task_app = typer.Typer(help="The built-in summarization task (offline data, gold reward, SFT reference).")
task_app.command("build")(data.task_build)
app.add_typer(task_app, name="task")
data_app = typer.Typer(help="Preference datasets: conversion, validation, uploads to the control service.")
data_app.command("convert-tldr")(data.data_convert_tldr)
data_app.command("convert-hh")(data.data_convert_hh)
data_app.command("convert-ultrafeedback")(data.data_convert_ultrafeedback)
data_app.command("check")(data.data_check)
data_app.command("push")(data.data_push)
data_app.command("ls")(data.data_list)
data_app.command("rm")(data.data_remove)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="Models uploaded to the control service (safetensors folders).")
model_app.command("push")(data.model_push)
model_app.command("ls")(data.model_list)
model_app.command("rm")(data.model_remove)
app.add_typer(model_app, name="model")
secret_app = typer.Typer(help="Your secrets on the control service (an endpoint judge's API key).")
secret_app.command("set")(data.secret_set)
secret_app.command("ls")(data.secret_list)
secret_app.command("rm")(data.secret_remove)
app.add_typer(secret_app, name="secret")

# Work in this process, no services.
app.command("train")(runs.train_command)
app.command("plan")(runs.plan_command)
app.command("generate")(runs.generate_command)
app.command("judge")(judging.judge_command)
app.command("judge-eval")(judging.judge_eval_command)
app.command("run")(runs.run_command)
app.command("reproduce")(runs.reproduce_command)

# Jobs on the control service (HTTP).
app.command("submit")(jobs.submit_command)
app.command("list")(jobs.list_command)
app.command("status")(jobs.status_command)
app.command("watch")(jobs.watch_command)
app.command("cancel")(jobs.cancel_command)
app.command("delete")(jobs.delete_command)
app.command("report")(jobs.report_command)

# The local stack and the demo.
app.command("up")(stack.up_command)
app.command("down")(stack.down_command)
app.command("demo")(stack.demo_command)


def version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"gpo {version('gpo-platform')}")
        raise typer.Exit()


@app.callback()
def options(
    show_version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Generalized Preference Optimization: losses, analyses, training, sweeps and the platform's jobs."""


def main() -> None:
    # Our own progress display is enough; set before transformers (imported by the commands that
    # use it, not here: `gpo --help` must start fast) reads it.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's start-up report is not the user's business
    app()
