"""``gpo model from-gguf``: a model that ships as a GGUF file, made a transformers folder that
training, sampling, judging and ``gpo model push`` take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from gpo_client.cli.output import console, fail


def from_gguf(
    gguf: Annotated[Path, typer.Argument(help="The .gguf file.")],
    out: Annotated[Path, typer.Argument(help="The transformers folder to write.")],
    dtype: Annotated[Literal["bfloat16", "float32"], typer.Option(help="Weights' type once dequantized.")] = "bfloat16",
) -> None:
    """Convert a GGUF model (llama.cpp's format) to a transformers folder: weights dequantized,
    tokenizer and chat template kept."""
    import torch

    from gpo_core.models import convert_gguf

    if out.exists() and any(out.iterdir()):
        raise fail(f"{out}: the folder exists and is not empty; give a new one")
    try:
        folder = convert_gguf(gguf, out, getattr(torch, dtype))
    except (FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    console.print(f"{folder}: a transformers model folder (give it as policy, reference or judge model_dir)")
