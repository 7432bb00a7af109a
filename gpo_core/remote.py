"""Models and data at object-store URIs (``s3://bucket/prefix/...`` and any other fsspec protocol
installed): copied once into the local cache, keyed by what the store says about the objects
(names, sizes, ETags or modification times), so a changed object is fetched again and an unchanged
one never is. Credentials and endpoints come from the environment the way the protocol's library
reads them (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an
S3-compatible server)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

URI_MARK = "://"


def is_uri(value: str | None) -> bool:
    return value is not None and URI_MARK in value


def normalized(uri: str) -> str | None:
    """``uri`` without a trailing slash, or None if it is not a plain ``scheme://path`` (``..``,
    ``.``, empty segments, a query or credentials would let a prefix check be walked around)."""
    scheme, _, rest = uri.partition(URI_MARK)
    if not scheme.isalnum() or not rest or any(c in rest for c in "?#@\\\x00"):
        return None
    parts = rest.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return f"{scheme.lower()}{URI_MARK}{'/'.join(parts)}"


def under(uri: str, roots: list[str]) -> bool:
    """Is ``uri`` at or below one of ``roots`` (segment by segment, after normalizing both)?"""
    target = normalized(uri)
    if target is None:
        return False
    for root in roots:
        base = normalized(root)
        if base is not None and (target == base or target.startswith(base + "/")):
            return True
    return False


def _filesystem(uri: str):
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(uri)
    return filesystem, path


def exists(uri: str) -> bool:
    filesystem, path = _filesystem(uri)
    return filesystem.exists(path)


def _listing(filesystem, path: str) -> list[dict]:
    """The objects at ``path`` (one file, or every file under a folder) with their identity."""
    if filesystem.isfile(path):
        found = {path: filesystem.info(path)}
    else:
        folder = path.rstrip("/") + "/"
        found = {name: info for name, info in filesystem.find(path, detail=True).items() if name.startswith(folder)}
    if not found:
        raise FileNotFoundError(f"nothing at {path}")
    keys = ("size", "ETag", "etag", "LastModified", "mtime", "md5")
    return [{"name": name, **{k: str(info[k]) for k in keys if k in info}} for name, info in sorted(found.items())]


def materialize(uri: str, cache_dir: str | Path) -> Path:
    """A local copy of ``uri`` (a file or a folder) in ``cache_dir/remote``, fetched only if the
    objects changed since the last copy; written aside, then renamed (two workers: one wins)."""
    filesystem, path = _filesystem(uri)
    listing = _listing(filesystem, path)
    key = hashlib.sha256(json.dumps([normalized(uri), listing]).encode()).hexdigest()[:24]
    single = len(listing) == 1 and listing[0]["name"].rstrip("/") == path.rstrip("/")
    name = PurePosixPath(path.rstrip("/")).name or "object"
    final = Path(cache_dir) / "remote" / key
    target = final / name
    if target.exists():
        return target
    work = final.with_name(f".{key}.{uuid.uuid4().hex}")
    try:
        if single:
            work.mkdir(parents=True)
            filesystem.get_file(path, str(work / name))
        else:
            (work / name).mkdir(parents=True)
            for entry in listing:
                relative = PurePosixPath(entry["name"]).relative_to(PurePosixPath(path.rstrip("/")))
                if relative.is_absolute() or any(part in ("", ".", "..") for part in relative.parts):
                    raise ValueError(f"{uri}: object {entry['name']!r} would land outside the copy")
                destination = work / name / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                filesystem.get_file(entry["name"], str(destination))
        try:
            os.rename(work, final)
        except OSError:  # another worker finished the same copy first
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target
