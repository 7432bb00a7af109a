"""What a result was computed from, so that a result is reused only by a re-run that would compute
the same thing.

An *identity* is a flat mapping of the settings that determine a result, with every input file
or folder replaced by the digest of its content. It is recorded beside the result; a later run into
the same folder compares its own identity with the record and is refused, with the changes named,
when they differ (rather than resuming or reporting results of another spec as its own).

File digests are memoized in the cache, keyed by path, size, inode and modification time, so a
multi-gigabyte model is read once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from gpo_core.cache import cache_root
from gpo_core.data import write_json
from gpo_core.errors import InputError

MEMO = "digests"


def _memo_folder() -> Path:
    return cache_root() / MEMO


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes; read once per (path, size, inode, modification time)."""
    path = Path(path).resolve()
    info = path.stat()
    key = f"{path}|{info.st_size}|{info.st_ino}|{info.st_dev}|{info.st_mtime_ns}"
    memo = _memo_folder() / hashlib.sha256(key.encode()).hexdigest()
    try:
        value = memo.read_text().strip()
        if len(value) == 64:
            return value
    except OSError:
        pass
    with path.open("rb") as handle:
        value = hashlib.file_digest(handle, "sha256").hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        temporary = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        temporary.write_text(value)
        temporary.replace(memo)
    except OSError:
        pass  # a read-only cache only costs speed
    return value


def content_digest(path: str | Path, suffixes: tuple[str, ...] | None = None) -> str:
    """Digest of a file's bytes, or of a folder's files (relative names and bytes, recursively;
    hidden files skipped; only names ending in ``suffixes`` when given)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if suffixes is not None and file.suffix not in suffixes:
            continue
        h.update(str(relative).encode() + b"\0" + file_digest(file).encode())
    return h.hexdigest()


def digest(identity: dict) -> str:
    """One short hash of an identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two identities, one ``name: old -> new`` per setting."""
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, "(unset)"), new.get(name, "(unset)")
        if before == after:
            continue
        if name.endswith(".content"):
            lines.append(f"{name.removesuffix('.content')}: its content changed")
        else:
            lines.append(f"{name}: {before} -> {after}")
    return lines


def flatten(value: object, prefix: str = "") -> dict:
    """Nested mappings as one level of dotted names (``training.lr``), for comparing and naming."""
    if isinstance(value, dict):
        out: dict = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


class DifferentSpec(InputError):
    """A folder that holds results of another spec; the message names what changed."""


def claim(record: Path, identity: dict, what: str, hint: str) -> bool:
    """Record ``identity`` for the folder of ``record``, or check it against the one recorded there.
    Returns True when the folder already held results of this identity. Raises
    :class:`DifferentSpec` naming the changes when it held another's."""
    if record.exists():
        try:
            recorded = json.loads(record.read_text())["identity"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DifferentSpec(f"{record}: unreadable record of the {what}'s spec; {hint}") from None
        if recorded != identity:
            listed = "; ".join(changes(recorded, identity))
            raise DifferentSpec(f"{record.parent} holds a {what} of another spec ({listed}); {hint}")
        return True
    write_json(record, {"identity": identity, "digest": digest(identity)})
    return False
