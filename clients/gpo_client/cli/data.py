"""The built-in task and preference datasets: ``gpo task build``, ``gpo data convert-tldr``,
``gpo data check``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpo_client.cli.jobs import KeyOption, ServerOption, api_call, sdk_client
from gpo_client.cli.output import JsonFlag, console, emit_json, errors, fail


def task_build(
    as_json: JsonFlag = False,
    out: Annotated[
        Path | None, typer.Option(help="Cache folder (default: $GPO_CACHE_DIR/tasks or ~/.cache/gpo/tasks).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of everything: vocabulary, documents, model, samples.")] = 0,
    size: Annotated[
        str, typer.Option(help="small (tests, seconds), default, or paper (sentence summaries, gpo reproduce's).")
    ] = "default",
    architecture: Annotated[str, typer.Option(help="llama (causal) or t5 (encoder-decoder).")] = "llama",
) -> None:
    """Build the task (or return the cached build) and print its paths and quality figures."""
    from gpo_core.task.build import build_task, task_settings

    try:
        settings = task_settings(size=size, seed=seed, architecture=architecture)
    except ValueError as err:
        raise fail(str(err)) from None
    if as_json:
        artifacts = build_task(out, settings, progress=lambda message: errors.print(message, highlight=False))
        emit_json(artifacts.to_dict())
        return
    with console.status("building the task") as status:
        artifacts = build_task(out, settings, progress=status.update)
    summary = Table(title=f"built-in task ({'cached' if artifacts.cached else 'built'}: {artifacts.root})")
    summary.add_column("figure")
    summary.add_column("value")
    for key in (
        "gold_mean_reward", "ref_mean_reward", "ref_greedy_mean_reward", "random_mean_reward",
        "parameters", "build_seconds", "model_dir", "tokenizer_dir", "train_pairs", "eval_pairs", "eval_prompts",
    ):  # fmt: skip
        summary.add_row(key, str(getattr(artifacts, key)))
    console.print(summary)


SkipInvalid = Annotated[
    bool, typer.Option("--skip-invalid", help="Skip malformed lines and count them instead of stopping.")
]


def _converted(convert, source: Path, destination: Path, **options) -> None:
    report = convert(source, destination, **options)
    console.print(f"wrote {report.written} pairs to {destination}", highlight=False)
    if report.skipped:
        errors.print(f"skipped {len(report.skipped)} malformed lines:", highlight=False)
        for reason in report.skipped[:20]:
            errors.print(f"  {reason}", highlight=False)
        if len(report.skipped) > 20:
            errors.print(f"  ... and {len(report.skipped) - 20} more", highlight=False)


def data_convert_tldr(
    source: Annotated[Path, typer.Argument(help="OpenAI summarize_from_feedback comparisons (JSONL).")],
    destination: Annotated[Path, typer.Argument(help="Output in the common format (JSONL).")],
    skip_invalid: SkipInvalid = False,
) -> None:
    """Convert TL;DR comparisons to {"prompt", "chosen", "rejected"} with the TL;DR prompt template."""
    from gpo_core.tldr import convert_tldr

    _converted(convert_tldr, source, destination, skip_invalid=skip_invalid)


def data_convert_hh(
    source: Annotated[Path, typer.Argument(help="Anthropic HH pairs: chosen and rejected dialogues (JSONL).")],
    destination: Annotated[Path, typer.Argument(help="Output in TRL's conversational format (JSONL).")],
    skip_invalid: SkipInvalid = False,
) -> None:
    """Convert whole-dialogue pairs (Human:/Assistant: turns) to conversations with their common turns as prompt."""
    from gpo_core.converters import convert_hh

    _converted(convert_hh, source, destination, skip_invalid=skip_invalid)


def data_convert_ultrafeedback(
    source: Annotated[Path, typer.Argument(help="Raw UltraFeedback: instruction and scored completions (JSONL).")],
    destination: Annotated[Path, typer.Argument(help="Output in TRL's conversational format (JSONL).")],
    seed: Annotated[int, typer.Option(help="Seed of the draw of the rejected completion.")] = 0,
    skip_invalid: SkipInvalid = False,
) -> None:
    """Convert to pairs: the best completion (overall_score) against one drawn among those scored lower."""
    from gpo_core.converters import convert_ultrafeedback

    _converted(convert_ultrafeedback, source, destination, skip_invalid=skip_invalid, seed=seed)


def data_check(path: Annotated[Path, typer.Argument(help="JSONL, Parquet or a saved datasets folder.")]) -> None:
    """Validate a preference dataset; the first bad record is reported with file, line and field,
    and pairs whose chosen and rejected responses are the same are listed (they carry no signal)."""
    from gpo_core.data import load_preferences

    records = load_preferences(path)
    console.print(f"{path}: {len(records)} valid preference pairs", highlight=False)
    same = [i for i, r in enumerate(records, start=1) if r["chosen"].strip() == r["rejected"].strip()]
    if same:
        listed = ", ".join(map(str, same[:10])) + (f" and {len(same) - 10} more" if len(same) > 10 else "")
        errors.print(f"warning: {len(same)} pairs have chosen == rejected (records {listed}): no preference "
                     "to learn from; training drops them", highlight=False)  # fmt: skip


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
    console.print(f"uploaded {record['reference']}: {record['records']} {kind}, {record['bytes']} bytes, "
                  f"sha256 {record['sha256']}", highlight=False)  # fmt: skip


def data_list(server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Your uploads on the control service."""
    table = Table()
    for column in ("reference", "kind", "records", "bytes", "sha256"):
        table.add_column(column)
    for record in api_call(sdk_client(server, api_key).uploads):
        table.add_row(record["reference"], record["kind"], str(record["records"]), str(record["bytes"]),
                      record["sha256"][:16])  # fmt: skip
    console.print(table)


def model_push(
    folder: Annotated[Path, typer.Argument(help="A transformers model folder (safetensors weights).")],
    name: Annotated[str | None, typer.Option(help="Name on the server (default: the folder's name).")] = None,
    server: ServerOption = None,
    api_key: KeyOption = None,
) -> None:
    """Upload a model to the control service; job specs then name it model:NAME."""
    if not (folder / "config.json").is_file():
        raise fail(f"{folder}: not a model folder (no config.json)")
    record = api_call(sdk_client(server, api_key).upload_model, folder, name)
    console.print(f"uploaded {record['reference']}: {record['model_type']}, {record['parameters']:,} parameters, "
                  f"{len(record['files'])} files, sha256 {record['sha256']}", highlight=False)  # fmt: skip


def model_list(server: ServerOption = None, api_key: KeyOption = None) -> None:
    """Your models on the control service."""
    table = Table()
    for column in ("reference", "type", "parameters", "bytes", "sha256"):
        table.add_column(column)
    for record in api_call(sdk_client(server, api_key).models):
        table.add_row(record["reference"], record["model_type"], f"{record['parameters']:,}", str(record["bytes"]),
                      record["sha256"][:16])  # fmt: skip
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
