"""The one cache root, in a module of its own (no torch), so that light modules can use it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root of every cache (built tasks, reference log-probs, samples, file digests):
    $GPO_CACHE_DIR or ~/.cache/gpo. Each user of the cache keeps to its own subfolder."""
    return Path(os.environ.get("GPO_CACHE_DIR") or Path.home() / ".cache" / "gpo")
