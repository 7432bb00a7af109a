"""Preference data in the common format ``{"prompt", "chosen", "rejected"}`` (extra fields kept).

Each value is a text or, in TRL's conversational format, a list of messages ``{"role",
"content"}``; a pair may leave the prompt implicit (chosen and rejected as whole conversations:
the prompt is their common beginning, see :mod:`gpo_core.conversation`). Other column names are
mapped with ``columns``. Read from JSONL, Parquet or a saved Hugging Face ``datasets`` folder (its
``split``). Every record is validated and a bad one is reported with the file, the line (JSONL)
or row (Parquet, datasets) and the field, so a training run fails before it starts instead of
hours in. With ``skip_invalid`` bad records are skipped and counted instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gpo_core.conversation import ConversationError, message_problem, split_implicit
from gpo_core.errors import InputError

PAIR_FIELDS = ("prompt", "chosen", "rejected")
PROMPT_FIELDS = ("prompt",)


class DatasetError(InputError):
    """A dataset that cannot be used; the message names the file, line or row, and field."""


@dataclass
class LoadReport:
    records: list[dict]
    skipped: list[str] = field(default_factory=list)  # one reason per skipped record


def _raw_records(path: Path, split: str = "train") -> Iterator[tuple[str, dict | str]]:
    """(location, record or parse-error message) for each record of the file or folder."""
    if path.is_dir():
        yield from _dataset_folder_records(path, split)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise DatasetError(f"{path}: not a readable Parquet file ({err})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}: row {i}", row
    elif path.suffix in (".jsonl", ".json"):
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield f"{path}:{number}", f"not UTF-8 text (byte {err.start + 1} of the line)"
                    continue
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"{path}:{number}", f"not valid JSON ({err.msg} at column {err.colno})"
                except RecursionError:
                    yield f"{path}:{number}", "JSON nested too deeply"
                except ValueError as err:  # an integer of more digits than Python converts
                    yield f"{path}:{number}", f"not usable JSON ({err})"
    else:
        raise DatasetError(f"{path}: unknown dataset format; use .jsonl, .parquet or a saved datasets folder")


def _dataset_folder_records(path: Path, split: str) -> Iterator[tuple[str, dict]]:
    if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        raise DatasetError(f"{path}: a folder, but not one written by datasets' save_to_disk")
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"{path}: no split '{split}' (it has {', '.join(loaded)}); choose one with the split")
        loaded = loaded[split]
    for i, row in enumerate(loaded):
        yield f"{path}: row {i}", row


def _mapped(record: dict | str, columns: dict[str, str]) -> dict | str:
    """The record with its columns renamed to ours (``columns``: our name -> theirs)."""
    if not columns or not isinstance(record, dict):
        return record
    renamed = {k: v for k, v in record.items() if k not in columns.values()}
    for ours, theirs in columns.items():
        if theirs in record:
            renamed[ours] = record[theirs]
    return renamed


def _with_prompt(record: dict) -> dict:
    """A pair with an implicit prompt (TRL: chosen and rejected are whole conversations) made
    explicit; other records as they are."""
    if record.get("prompt") is not None or record.get("chosen") is None or record.get("rejected") is None:
        return record
    try:
        prompt, chosen, rejected = split_implicit(record["chosen"], record["rejected"])
    except ConversationError:
        return record  # the field checks name what is wrong
    return {**record, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _problem(record: dict | str, fields: tuple[str, ...]) -> str | None:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        return f"a record must be a JSON object, found {type(record).__name__}"
    for name in fields:
        value = record.get(name)
        if value is None:
            return f"field '{name}' is missing"
        if isinstance(value, list):
            role = "user" if name == "prompt" else "assistant"
            if (problem := message_problem(value, name, role)) is not None:
                return problem
        elif not isinstance(value, str):
            return f"field '{name}' must be a string or a list of messages, found {type(value).__name__}"
        elif not value.strip():
            return f"field '{name}' is empty"
    kinds = {isinstance(record[name], list) for name in fields}
    if len(kinds) > 1:
        return f"fields {', '.join(fields)} must all be texts or all be lists of messages, not a mix"
    return None


def load_records(
    path: str | Path,
    fields: tuple[str, ...] = PAIR_FIELDS,
    skip_invalid: bool = False,
    columns: dict[str, str] | None = None,
    split: str = "train",
) -> LoadReport:
    """Validated records (the named fields must be non-empty texts or message lists; others pass
    through). ``columns`` maps our field names to the dataset's (``{"prompt": "question"}``);
    ``split`` chooses the split of a saved ``DatasetDict``."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    report = LoadReport(records=[])
    for where, raw in _raw_records(path, split):
        record = _mapped(raw, columns or {})
        if fields == PAIR_FIELDS and isinstance(record, dict) and "prompt" not in (columns or {}):
            record = _with_prompt(record)
        problem = _problem(record, fields)
        mapped = [theirs for ours, theirs in (columns or {}).items() if problem and f"field '{ours}'" in problem]
        if problem and mapped:
            problem += f" (mapped from the data's column '{mapped[0]}')"
        if problem is None:
            assert isinstance(record, dict)  # a record without a problem is an object
            report.records.append(record)
        elif skip_invalid:
            report.skipped.append(f"{where}: {problem}")
        else:
            raise DatasetError(f"{where}: {problem}")
    if not report.records:
        raise DatasetError(
            f"{path}: no valid records" + (f" ({len(report.skipped)} skipped)" if report.skipped else "")
        )
    return report


def load_preferences(
    path: str | Path, skip_invalid: bool = False, columns: dict[str, str] | None = None, split: str = "train"
) -> list[dict]:
    """Preference pairs; raises :class:`DatasetError` on the first bad record."""
    return load_records(path, PAIR_FIELDS, skip_invalid, columns, split).records


def count_records(path: str | Path) -> int:
    """Records in a dataset, without validating them: a cheap size for limits (a JSONL file's
    non-blank lines, a Parquet file's row count from its footer); a file at an object-store URI is
    read from the store."""
    if "://" in str(path):
        import fsspec

        with fsspec.open(str(path), "rb") as handle:
            if str(path).endswith(".parquet"):
                import pyarrow.parquet as pq

                return pq.ParquetFile(handle).metadata.num_rows
            return sum(1 for line in handle if line.strip())
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    return sum(1 for _ in _raw_records(path))


def load_prompts(path: str | Path) -> list[dict]:
    """Evaluation prompts: records with a non-empty ``prompt`` (text or messages; usually an ``id``)."""
    return load_records(path, PROMPT_FIELDS).records


def _write_atomically(path: str | Path, write: Callable[[TextIO], None]) -> Path:
    """Write into a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """One JSON object per line, written atomically."""
    return _write_atomically(
        path, lambda handle: handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    )


def write_json(path: str | Path, value: object) -> Path:
    """One JSON document, written atomically."""
    return _write_atomically(path, lambda handle: json.dump(value, handle, indent=1, ensure_ascii=False))
