"""Server paths out of everything a tenant reads about a job. A worker's messages, events and
files name the paths it worked with (an upload's admitted copy, the job's folder, the cache);
what leaves the API names them as the tenant knows them: ``data:NAME`` and ``model:NAME`` for
uploads, the path the tenant typed for a read root, paths relative to the job's folder, and
``<artifacts>``, ``<cache>``, ``<python>`` for the rest. This is done where text leaves (the job's
views, its events, its report and artifacts), once, instead of by every message's author."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from gpo_core.cache import cache_root
from gpo_core.sweep.views import JobView
from gpo_services.common.settings import Settings

TEXT_SUFFIXES = {".json", ".jsonl", ".html", ".txt", ".csv", ".log", ".yaml", ".yml", ".md"}


class Redactor:
    """Replaces each of ``replacements``' keys (paths) by its value wherever it occurs, the
    longest first; a path not ending in ``/`` only where it ends (``/srv/a`` is not a prefix of
    ``/srv/ab``)."""

    def __init__(self, replacements: dict[str, str]):
        pairs = sorted(((k, v) for k, v in replacements.items() if k), key=lambda kv: -len(kv[0]))
        self._by = dict(pairs)
        self.longest = max((len(k.encode()) for k, _ in pairs), default=0)  # bytes a path may span
        alternatives = [re.escape(k) + ("" if k.endswith("/") else r"(?![\w.-])") for k, _ in pairs]
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None

    def text(self, value: str) -> str:
        if self._pattern is None:
            return value
        return self._pattern.sub(lambda match: self._by[match.group(0)], value)

    def data(self, value: Any) -> Any:
        """``value`` (JSON-like) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.data(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.data(item) for item in value]
        return value

    def raw(self, content: bytes) -> bytes:
        return self.text(content.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def view(self, job: JobView) -> JobView:
        runs = [run.model_copy(update={"reason": self.text(run.reason)}) if run.reason else run for run in job.runs]
        return job.model_copy(update={"reason": self.text(job.reason) if job.reason else None, "runs": runs})


def _forms(path: str | Path) -> set[str]:
    """A path as written and with its links resolved (a worker may have seen either)."""
    return {str(path).rstrip("/"), os.path.realpath(path)}


def job_redactor(settings: Settings, job_id: str, names: str | None) -> Redactor:
    """The redactor of job ``job_id``: ``names`` (JSON, stored with the job at submission) maps
    each resolved input path to what the tenant named it."""
    replacements: dict[str, str] = {}
    roots: list[tuple[str | Path, str]] = [
        (settings.artifacts / job_id, ""),
        (settings.artifacts, "<artifacts>/"),
        (settings.cache_dir or cache_root(), "<cache>/"),
        (sys.prefix, "<python>/"),
    ]
    for root, shown in roots:
        for form in _forms(root):
            replacements[form + "/"] = shown
            replacements[form] = shown.rstrip("/") or "."
    for resolved, shown in (json.loads(names) if names else {}).items():
        for form in _forms(resolved):
            replacements[form] = shown
            replacements[form + "/"] = shown + "/"
    return Redactor(replacements)
