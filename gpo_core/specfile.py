"""Reading spec files (YAML or JSON) and reporting pydantic's errors by field, the same way for
every kind of spec."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError


def describe_errors(err: ValidationError) -> list[dict]:
    """pydantic's errors as ``{"field": "a.b.0", "message": ...}``."""
    return [
        {
            "field": ".".join(str(part) for part in problem["loc"]) or "(spec)",
            "message": problem["msg"].removeprefix("Value error, "),
        }
        for problem in err.errors()
    ]


def format_errors(err: ValidationError, source: str, what: str) -> str:
    lines = [f"{source}: invalid {what}"] + [f"  {e['field']}: {e['message']}" for e in describe_errors(err)]
    return "\n".join(lines)


def read_mapping(path: str | Path, error: type[Exception]) -> dict:
    """The mapping in a YAML or JSON file (JSON is YAML); ``error`` says what is wrong and where."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a spec is a mapping of fields, found {type(data).__name__}")
    return data
