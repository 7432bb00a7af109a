"""Bearer API keys mapped to tenants, and artifact paths that cannot leave a job's folder."""

from __future__ import annotations

import hmac
import stat
from pathlib import Path, PurePosixPath


def tenant_for(keys: dict[str, str], presented: str) -> str | None:
    """The tenant of ``presented``, comparing against every key in constant time (no early exit
    that would tell an attacker how much of a key matched, or which key was close)."""
    found = None
    candidate = presented.encode()
    for key, tenant in keys.items():
        if hmac.compare_digest(key.encode(), candidate):
            found = tenant
    return found


def artifact_path(job_dir: Path, relative: str) -> Path | None:
    """``job_dir/relative`` when it is a regular file inside the job folder with a single link,
    reached without symlinks; None for anything else (``..``, absolute or backslashed paths, NUL,
    symlinks, names too long for the file system, a hard link planted to a file elsewhere)."""
    if not relative or "\x00" in relative or "\\" in relative or relative.startswith("/"):
        return None
    parts = PurePosixPath(relative).parts
    if any(part in ("..", ".") for part in parts):
        return None
    current = job_dir
    try:
        for part in parts:
            current = current / part
            if current.is_symlink():
                return None
        resolved = current.resolve(strict=True)
        status = resolved.lstat()
    except (OSError, RuntimeError):  # missing, ENAMETOOLONG, a loop
        return None
    if not resolved.is_relative_to(job_dir.resolve()) or not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        return None
    return resolved
