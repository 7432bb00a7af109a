"""Model archives as they arrive: a tar archive (gzipped or not) of a transformers model folder is
held to a narrow shape before anything reads it (regular files only, at most ``MAX_MEMBERS``,
names from a small set of suffixes, safetensors weights only, no ``auto_map``, every safetensors
header readable), extracted within a size bound, and no path inside it is ever followed."""

from __future__ import annotations

import json
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from gpo_core.models import ADAPTER_BASE_RECORD, write_adapter_base
from gpo_core.specfile import ADAPTER_CONFIG
from gpo_services.control.errors import ApiError

MAX_MEMBERS = 1000
INFLATION, MIN_UNPACKED = 20, 64 * 2**20
ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".jinja", ".md"}


def _refuse(message: str) -> ApiError:
    return ApiError(422, "invalid_model", message)


def _read_json(path: Path, member: Path | str) -> object:
    """A JSON file of the upload, or a 422 naming it: not text, not JSON, nested past the parser's
    depth, or a number past Python's digit limit are all the tenant's to fix, never a 500."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _refuse(f"{member}: not valid JSON ({err})") from None
    except RecursionError:
        raise _refuse(f"{member}: JSON nested too deeply") from None
    except ValueError as err:  # an integer of more digits than Python converts
        raise _refuse(f"{member}: not usable JSON ({err})") from None


def _checked_members(archive: tarfile.TarFile, limit: int) -> list[tarfile.TarInfo]:
    """The archive's files, if every member is a plain file or folder with an allowed name."""
    members, total = [], 0
    for number, member in enumerate(archive, start=1):
        if number > MAX_MEMBERS:
            raise _refuse(f"the archive has more than {MAX_MEMBERS} members")
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or "\\" in member.name:
            raise _refuse(f"{member.name}: a path outside the model folder")
        if member.isdir():
            continue
        if not member.isreg():
            raise _refuse(f"{member.name}: only regular files are accepted (no links or devices)")
        if name.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"):
            raise _refuse(f"{member.name}: weights must be safetensors (pickle files can run code when loaded)")
        if name.suffix not in ALLOWED_SUFFIXES:
            raise _refuse(f"{member.name}: not a model file (accepted: {', '.join(sorted(ALLOWED_SUFFIXES))})")
        total += member.size
        if total > limit:
            raise _refuse(f"the archive's files are larger than {limit} bytes once extracted")
        members.append(member)
    return members


def _model_root(files: list[PurePosixPath]) -> PurePosixPath:
    """The folder holding config.json: the archive's top level, or its one top folder."""
    configs = [f.parent for f in files if f.name == "config.json"]
    if len(configs) != 1:
        raise _refuse("the archive must hold exactly one config.json (a transformers model folder)")
    return configs[0]


def _parameters(path: Path) -> int:
    from safetensors import safe_open

    count = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - a safetensors handle is not a dict
            shape = handle.get_slice(key).get_shape()
            numel = 1
            for size in shape:
                numel *= size
            count += numel
    return count


PATH_KEYS = ("_name_or_path", "name_or_path")  # where a model's files came from on its author's machine


def _no_path_followed(work: Path, resolve_base: Callable[[str], Path | None]) -> None:
    """No path inside the upload is ever followed. Path-valued fields of its JSON files (a config's
    ``_name_or_path``, a tokenizer's ``*_file``) are dropped: every file is read from the folder
    itself. An adapter's base (``base_model_name_or_path``) is resolved with this tenant's rights
    (``model:NAME`` or a path under the operator's read roots) and recorded by the platform in
    :data:`ADAPTER_BASE_RECORD`, which workers read instead; an upload that carries that file, or
    names a base it may not read, is refused (a missing and a forbidden base get the same answer)."""
    for path in sorted(work.rglob("*.json")):
        member = path.relative_to(work)
        if path.name == ADAPTER_BASE_RECORD:
            raise _refuse(f"{member}: a file name this platform keeps for itself")
        content = _read_json(path, member)
        if not isinstance(content, dict) or path.name == ADAPTER_CONFIG:
            continue
        paths = [k for k, v in content.items() if k in PATH_KEYS or (k.endswith("_file") and isinstance(v, str))]
        if paths:
            kept = {k: v for k, v in content.items() if k not in paths}
            path.write_text(json.dumps(kept, indent=2), encoding="utf-8")
    adapter = work / ADAPTER_CONFIG
    if not adapter.is_file():
        return
    adapter_config = _read_json(adapter, ADAPTER_CONFIG)
    named = adapter_config.get("base_model_name_or_path") if isinstance(adapter_config, dict) else None
    base = resolve_base(named) if isinstance(named, str) else None
    if base is None:
        raise _refuse(
            f"{ADAPTER_CONFIG}: base_model_name_or_path must name one of your models (model:NAME) or a "
            f"model under the operator's read roots; {str(named)[:200]!r} is not one"
        )
    write_adapter_base(work, base)


def unpack_model(
    archive_path: Path, work: Path, name: str, limit: int, resolve_base: Callable[[str], Path | None]
) -> tuple[list[str], str, int]:
    """Extract the checked archive into ``work`` and check the model there: (files, type, params)."""
    try:
        with tarfile.open(archive_path, mode="r:*") as archive:
            members = _checked_members(archive, limit)
            root = _model_root([PurePosixPath(m.name) for m in members])
            for member in members:
                relative = PurePosixPath(member.name).relative_to(root) if root.parts else PurePosixPath(member.name)
                target = work / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None  # _checked_members keeps regular files only
                with source, target.open("wb") as handle:
                    shutil.copyfileobj(source, handle)
    except (tarfile.TarError, EOFError, zlib.error) as err:  # EOFError, zlib.error: a damaged gzip stream
        raise _refuse(f"{name}: not a readable tar archive ({err})") from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise _refuse(f"{name}: a path in the archive is both a file and a folder") from None
    config = _read_json(work / "config.json", "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise _refuse("config.json: no model_type (not a transformers model config)")
    if "auto_map" in config:
        raise _refuse("config.json: auto_map asks for the model's own code, which is not run here")
    _no_path_followed(work, resolve_base)
    weights = sorted(work.rglob("*.safetensors"))
    if not weights:
        raise _refuse("no .safetensors weights in the archive")
    parameters = 0
    for path in weights:
        try:
            parameters += _parameters(path)
        except Exception as err:  # safetensors raises several types for a damaged header
            raise _refuse(f"{path.relative_to(work)}: not a readable safetensors file ({err})") from None
    files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    return files, config["model_type"], parameters
