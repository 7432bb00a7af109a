"""What a tenant keeps on the control service (HTTP): ``gpo data push|ls|rm`` (datasets),
``gpo model push|ls|rm`` (models) and ``gpo secret set|ls|rm`` (an endpoint judge's key)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpo_client.cli.jobs import KeyOption, ServerOption, api_call, sdk_client
from gpo_client.cli.output import console, fail


def data_push(
    path: Annotated[Path, typer.Argument(help="Pairs or prompts: JSONL or Parquet.")],
    name: Annotated[str | None, typer.Option(help="Name on the server (default: the file's name).")] = None,
    kind: Annotated[str, typer.Option(help="pairs or prompts.")] = "pairs",
    server: ServerOption = None,
    api_key: KeyOption = None,
) -> None:
    """Upload a dataset to the control service; job specs then name it data:NAME."""
    if not path.is_file():
        raise fail(f"{path}: no such file")
    record = api_call(sdk_client(server, api_key).upload, path, name, kind)
    console.print(
        f"uploaded {record['reference']}: {record['records']} {kind}, {record['bytes']} bytes, "
        f"sha256 {record['sha256']}",
        highlight=False,
    )


def data_list(server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Your uploads on the control service."""
    table = Table()
    for column in ("reference", "kind", "records", "bytes", "sha256"):
        table.add_column(column)
    for record in api_call(sdk_client(server, api_key).uploads):
        table.add_row(
            record["reference"], record["kind"], str(record["records"]), str(record["bytes"]), record["sha256"][:16]
        )
    console.print(table)


def model_push(
    folder: Annotated[Path, typer.Argument(help="A transformers model folder (safetensors weights).")],
    name: Annotated[str | None, typer.Option(help="Name on the server (default: the folder's name).")] = None,
    server: ServerOption = None,
    api_key: KeyOption = None,
) -> None:
    """Upload a model to the control service; job specs then name it model:NAME."""
    from gpo_core.specfile import not_a_model_folder

    if not (folder / "config.json").is_file():
        raise fail(not_a_model_folder(folder))
    record = api_call(sdk_client(server, api_key).upload_model, folder, name)
    console.print(
        f"uploaded {record['reference']}: {record['model_type']}, {record['parameters']:,} parameters, "
        f"{len(record['files'])} files, sha256 {record['sha256']}",
        highlight=False,
    )


def model_list(server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Your models on the control service."""
    table = Table()
    for column in ("reference", "type", "parameters", "bytes", "sha256"):
        table.add_column(column)
    for record in api_call(sdk_client(server, api_key).models):
        table.add_row(
            record["reference"],
            record["model_type"],
            f"{record['parameters']:,}",
            str(record["bytes"]),
            record["sha256"][:16],
        )
    console.print(table)


def model_remove(name: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Delete one of your models."""
    api_call(sdk_client(server, api_key).delete_model, name)
    console.print(f"deleted model:{name}", highlight=False)


def data_remove(name: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Delete one of your uploads."""
    api_call(sdk_client(server, api_key).delete_upload, name)
    console.print(f"deleted data:{name}", highlight=False)


def secret_set(
    name: Annotated[str, typer.Argument(help="The secret's name; a job spec gives it as judge.api_key_secret.")],
    from_env: Annotated[
        str | None, typer.Option(help="Read the value from this variable of your environment (else from stdin).")
    ] = None,
    server: ServerOption = None,
    api_key: KeyOption = None,
) -> None:
    """Store one of your secrets (a judge API's key) on the control service; it is never shown again."""
    import os
    import sys

    value = os.environ.get(from_env, "") if from_env else sys.stdin.readline()
    if not value.strip():
        raise fail(f"no value: {'$' + from_env + ' is empty' if from_env else 'give it on stdin, or --from-env VAR'}")
    api_call(sdk_client(server, api_key).set_secret, name, value.strip())
    console.print(f"stored secret {name}", highlight=False)


def secret_list(server: ServerOption = None, api_key: KeyOption = None) -> None:
    """The names of your secrets."""
    for name in api_call(sdk_client(server, api_key).secrets):
        console.print(name, highlight=False)


def secret_remove(name: str, server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Delete one of your secrets."""
    api_call(sdk_client(server, api_key).delete_secret, name)
    console.print(f"deleted secret {name}", highlight=False)
