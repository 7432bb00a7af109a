"""Converters from the common public shapes of preference data to TRL's conversational format
(``prompt``, ``chosen``, ``rejected`` as lists of messages), one JSON object a line:

- **Anthropic HH** (``hh-rlhf``): ``chosen`` and ``rejected`` are whole dialogues as text,
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; the prompt is their common turns;
- **UltraFeedback** (raw ``openbmb/UltraFeedback``): an ``instruction`` and scored
  ``completions``; the pair is the best completion (``overall_score``) against another drawn at
  random among those scored lower, as ``ultrafeedback_binarized`` does, with the seed given.

A line that cannot be converted is reported with file, line and why (or skipped and counted).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from gpo_core.conversation import split_implicit
from gpo_core.data import DatasetError, write_jsonl

_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass
class ConversionReport:
    written: int = 0
    skipped: list[str] = field(default_factory=list)


def convert_jsonl(
    source: str | Path, destination: str | Path, convert: Callable[[dict, int], dict], skip_invalid: bool = False
) -> ConversionReport:
    """Apply ``convert(record, line_number)`` to every line; the first bad line raises with its
    number unless ``skip_invalid``. The output is written atomically, all or nothing."""
    source = Path(source)
    if not source.is_file():
        raise DatasetError(f"{source}: no such file")
    report = ConversionReport()
    converted = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a line must hold a JSON object, found {type(record).__name__}")
                converted.append(convert(record, number))
            except json.JSONDecodeError as err:
                problem = f"{source}:{number}: not valid JSON ({err.msg} at column {err.colno})"
                if not skip_invalid:
                    raise DatasetError(problem) from None
                report.skipped.append(problem)
            except ValueError as err:
                if not skip_invalid:
                    raise DatasetError(f"{source}:{number}: {err}") from None
                report.skipped.append(f"{source}:{number}: {err}")
    write_jsonl(destination, converted)
    report.written = len(converted)
    return report


def hh_messages(text: object, name: str) -> list[dict]:
    """An HH dialogue as messages: ``\\n\\nHuman: `` and ``\\n\\nAssistant: `` start the turns."""
    if not isinstance(text, str) or not _TURN.match(text):
        raise ValueError(f"field '{name}' must be a dialogue starting with '\\n\\nHuman: '")
    parts = _TURN.split(text)[1:]  # [speaker, content, speaker, content, ...]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[speaker], "content": content.strip()}
        for speaker, content in zip(parts[::2], parts[1::2], strict=True)
    ]


def convert_hh_record(raw: dict, number: int = 0) -> dict:
    chosen_turns, rejected_turns = (
        hh_messages(raw.get("chosen"), "chosen"),
        hh_messages(raw.get("rejected"), "rejected"),
    )
    # Conversations in, conversations out.
    prompt, chosen, rejected = (cast(list[dict], part) for part in split_implicit(chosen_turns, rejected_turns))
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError("the two dialogues do not share a beginning that ends with the human's turn")
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("a dialogue does not end with the assistant's reply")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def convert_hh(source: str | Path, destination: str | Path, skip_invalid: bool = False) -> ConversionReport:
    return convert_jsonl(source, destination, convert_hh_record, skip_invalid)


def convert_ultrafeedback_record(raw: dict, number: int = 0, seed: int = 0) -> dict:
    instruction = raw.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("field 'instruction' is missing or empty")
    completions = raw.get("completions")
    if not isinstance(completions, list):
        raise ValueError("field 'completions' must be a list")
    scored = []
    for i, completion in enumerate(completions):
        response = completion.get("response") if isinstance(completion, dict) else None
        score = completion.get("overall_score") if isinstance(completion, dict) else None
        if not isinstance(response, str) or not response.strip():
            raise ValueError(f"field 'completions[{i}].response' is missing or empty")
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise ValueError(f"field 'completions[{i}].overall_score' must be a number, found {score!r}")
        scored.append((float(score), response.strip()))
    best = max(scored, key=lambda pair: pair[0]) if scored else None
    lower = [pair for pair in scored if best is not None and pair[0] < best[0]]
    if best is None or not lower:
        raise ValueError("no two completions with different overall_score: no preference to take")
    rejected = random.Random(f"{seed}-{number}").choice(lower)
    return {
        "prompt": [{"role": "user", "content": instruction.strip()}],
        "chosen": [{"role": "assistant", "content": best[1]}],
        "rejected": [{"role": "assistant", "content": rejected[1]}],
        "score_chosen": best[0],
        "score_rejected": rejected[0],
    }


def convert_ultrafeedback(
    source: str | Path, destination: str | Path, skip_invalid: bool = False, seed: int = 0
) -> ConversionReport:
    def convert(raw: dict, number: int) -> dict:
        return convert_ultrafeedback_record(raw, number, seed)

    return convert_jsonl(source, destination, convert, skip_invalid)
