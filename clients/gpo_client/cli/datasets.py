"""The built-in task and preference datasets on this machine: ``gpo task build``, ``gpo data
convert-tldr`` (and the other converters), ``gpo data check``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
        "gold_mean_reward",
        "ref_mean_reward",
        "ref_greedy_mean_reward",
        "random_mean_reward",
        "parameters",
        "build_seconds",
        "model_dir",
        "tokenizer_dir",
        "train_pairs",
        "eval_pairs",
        "eval_prompts",
    ):
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
    from gpo_core.conversation import as_text
    from gpo_core.data import load_preferences

    records = load_preferences(path)
    kind = "conversational" if any(not isinstance(r["prompt"], str) for r in records) else "text"
    console.print(f"{path}: {len(records)} valid preference pairs ({kind})", highlight=False)
    # Texts or lists of messages (TRL's conversational format): compared as the text a judge reads.
    same = [i for i, r in enumerate(records, start=1) if as_text(r["chosen"]).strip() == as_text(r["rejected"]).strip()]
    if same:
        listed = ", ".join(map(str, same[:10])) + (f" and {len(same) - 10} more" if len(same) > 10 else "")
        errors.print(
            f"warning: {len(same)} pairs have chosen == rejected (records {listed}): no preference "
            "to learn from; training drops them",
            highlight=False,
        )
