"""The ``gpo`` command line, assembled in one place: every command and group is registered here,
from the module that holds it. Commands import their heavy libraries (torch, transformers, Ray)
when they run, not when ``gpo`` starts."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated

import typer

from gpo_client.cli import analysis, datasets, jobs, judging, models, runs, stack, uploads
from gpo_client.cli.output import fail
from gpo_core.errors import GPOError


def command(group: typer.Typer, name: str, function: Callable[..., None]) -> None:
    """Register ``function`` as ``gpo [group] name``. An error the platform raises on purpose
    (``GPOError``: its message names the field, line, file or URL) ends the command with that one
    line and exit code 2, never a traceback: the one place the CLI catches errors for its commands."""

    @functools.wraps(function)
    def reporting(*args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except GPOError as err:
            raise fail(str(err)) from None

    group.command(name)(reporting)


app = typer.Typer(
    help="Generalized Preference Optimization: losses, analyses, training, sweeps and the platform's jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The paper's analyses (computed here).
command(app, "losses", analysis.losses)
command(app, "bandit", analysis.bandit)
command(app, "gaussians", analysis.gaussians)
command(app, "paper", analysis.paper)

# The built-in task and datasets.
task_app = typer.Typer(help="The built-in summarization task (offline data, gold reward, SFT reference).")
command(task_app, "build", datasets.task_build)
app.add_typer(task_app, name="task")
data_app = typer.Typer(help="Preference datasets: conversion, validation, uploads to the control service.")
command(data_app, "convert-tldr", datasets.data_convert_tldr)
command(data_app, "convert-hh", datasets.data_convert_hh)
command(data_app, "convert-ultrafeedback", datasets.data_convert_ultrafeedback)
command(data_app, "check", datasets.data_check)
command(data_app, "push", uploads.data_push)
command(data_app, "ls", uploads.data_list)
command(data_app, "rm", uploads.data_remove)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="Models: GGUF conversion, and uploads to the control service (safetensors folders).")
command(model_app, "from-gguf", models.from_gguf)
command(model_app, "push", uploads.model_push)
command(model_app, "ls", uploads.model_list)
command(model_app, "rm", uploads.model_remove)
app.add_typer(model_app, name="model")
secret_app = typer.Typer(help="Your secrets on the control service (an endpoint judge's API key).")
command(secret_app, "set", uploads.secret_set)
command(secret_app, "ls", uploads.secret_list)
command(secret_app, "rm", uploads.secret_remove)
app.add_typer(secret_app, name="secret")

# Work in this process, no services.
command(app, "train", runs.train_command)
command(app, "plan", runs.plan_command)
command(app, "generate", runs.generate_command)
command(app, "judge", judging.judge_command)
command(app, "judge-eval", judging.judge_eval_command)
command(app, "run", runs.run_command)
command(app, "reproduce", runs.reproduce_command)
command(app, "claims", runs.claims_command)

# Jobs on the control service (HTTP).
command(app, "submit", jobs.submit_command)
command(app, "list", jobs.list_command)
command(app, "status", jobs.status_command)
command(app, "watch", jobs.watch_command)
command(app, "cancel", jobs.cancel_command)
command(app, "delete", jobs.delete_command)
command(app, "report", jobs.report_command)

# The local stack and the demo.
command(app, "up", stack.up_command)
command(app, "down", stack.down_command)
command(app, "demo", stack.demo_command)


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
    # vLLM's start-up report and its warnings about its own kernels and CPU set-up, and torch's C++
    # notes on NUMA binding, are not the user's business: they were 102 of 134 lines of a small
    # `gpo run`. What a user must know (vLLM cannot serve a model, say) our own messages say.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    cli = typer.main.get_command(app)
    plain_flags(cli)
    cli()


def plain_flags(command) -> None:
    """A flag takes no value, so its help shows no type: typer labels every option with its type,
    and ``--watch <bool>`` read as if it wanted one. (``command`` is typer's own click command.)"""
    help_option = command.get_help_option(command.context_class(command))  # made once, then kept
    for param in [*command.params, help_option]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        plain_flags(sub)
