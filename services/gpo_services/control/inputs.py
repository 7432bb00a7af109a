"""Where a job may read its models and data: the tenant's own uploads (``data:NAME``,
``model:NAME``) and the operator's read-only roots (``GPO_READ_ROOTS``, e.g. shared base models),
nothing else; and the judge endpoints it may call: the operator's list (``GPO_JUDGE_ENDPOINTS``),
nothing else.

Each path a spec names is resolved here, when the job is submitted: an upload to its file in the
tenant's folder, a server path with ``realpath`` (links followed) and kept only if it stays inside
a read root. The stored spec holds the resolved paths, so workers open exactly what was checked.
A path that is missing and one that is forbidden get the same answer: the API is no oracle for
what exists on the server (another tenant's job folder, a key file, /etc/shadow).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gpo_core import remote
from gpo_core.inputs import named_paths
from gpo_core.remote import is_uri
from gpo_core.sweep.spec import JobSpec
from gpo_services.common.settings import Settings
from gpo_services.control.errors import ApiError
from gpo_services.control.storage import admitted, upload_names, uploaded_file, uploaded_model

UPLOAD_PREFIX = "data:"
MODEL_PREFIX = "model:"


def resolve_path(value: str, tenant: str, settings: Settings, admit: bool = False) -> str | None:
    """The real path ``value`` may be read at, or None if it is not this tenant's to read. With
    ``admit``, an upload's bytes as they are now (:func:`admitted`): what a job submitted now reads."""
    if value.startswith((UPLOAD_PREFIX, MODEL_PREFIX)):
        name = value.partition(":")[2]
        found = (uploaded_file if value.startswith(UPLOAD_PREFIX) else uploaded_model)(settings, tenant, name)
        if found is None:
            return None
        return str(admitted(settings, tenant, found) if admit else found)
    if is_uri(value):  # an object store: under a prefix the operator enabled, and there
        if settings.remote_roots and remote.under(value, settings.remote_roots) and remote.exists(value):
            return remote.normalized(value)
        return None
    if "\x00" in value or not os.path.isabs(value):
        return None
    real = Path(os.path.realpath(value))
    for root in settings.read_roots:
        if real.is_relative_to(os.path.realpath(root)) and real.exists():
            return str(real)
    return None


def not_readable(value: str, tenant: str, settings: Settings) -> str:
    """What to do about a path a job may not read: the upload names closest to a misspelt one
    (only the tenant's own), or how to upload a file. The same answer whether a server path is
    missing or forbidden."""
    if value.startswith((UPLOAD_PREFIX, MODEL_PREFIX)):
        prefix, _, name = value.partition(":")
        models = value.startswith(MODEL_PREFIX)
        close = difflib.get_close_matches(name, upload_names(settings, tenant, models), n=1, cutoff=0.6)
        if close:
            return f"{value!r} is not among your uploads; did you mean '{prefix}:{close[0]}'?"
        push = "gpo model push FOLDER --name NAME" if models else "gpo data push FILE"
        return f"{value!r} is not among your uploads: upload it first ({push}; gpo {'model' if models else 'data'} ls)"
    return (
        f"{value!r} is not a path this deployment lets a job read: upload your file (gpo data push FILE, gpo "
        "model push FOLDER) and name it data:NAME or model:NAME, or use a model under the operator's shared "
        "read-only roots"
    )


def resolve_spec_paths(spec: JobSpec, tenant: str, settings: Settings) -> tuple[JobSpec, dict[str, str]]:
    """``spec`` with every path resolved (see the module's docstring), or a 422 naming each field;
    an endpoint judge must be one of the operator's (``GPO_JUDGE_ENDPOINTS``). With it, each
    resolved path and what the tenant named it (what the API shows instead of the server path)."""
    updates: dict[str, object] = {}
    names: dict[str, str] = {}
    details: list[dict] = []
    named = {name: value for name, value in named_paths(spec).items() if value}
    for prefix, judge in spec.judges().items():
        if judge.api_key_env is not None:
            details.append(
                {
                    "field": f"{prefix}.api_key_env",
                    "message": "a worker's environment is not a job's to name: "
                    "the operator's key for the endpoint is used, or store your own (PUT /secrets/NAME, "
                    f"gpo secret set NAME) and give {prefix}.api_key_secret: NAME",
                }
            )
        if judge.calls_endpoint and not settings.allows_judge_endpoint(judge.base_url or ""):
            allowed = ", ".join(settings.judge_endpoint_urls()) or "none (an operator sets GPO_JUDGE_ENDPOINTS)"
            details.append(
                {
                    "field": f"{prefix}.base_url",
                    "message": f"not a judge endpoint of this deployment; allowed: {allowed}",
                }
            )
        if judge.kind != "local":
            named.pop(f"{prefix}.model_dir", None)  # read by a local judge only
    for field, value in named.items():
        resolved = resolve_path(value, tenant, settings, admit=True)
        if resolved is None:
            details.append({"field": field, "message": not_readable(value, tenant, settings)})
            continue
        names[resolved] = value
        updates[field] = resolved
    if details:
        raise ApiError(422, "invalid_spec", "; ".join(f"{d['field']}: {d['message']}" for d in details), details)
    return with_fields(spec, updates), names


def with_fields(model: BaseModel, updates: dict[str, object]) -> Any:
    """``model`` with each dotted field of ``updates`` set (``online.annotator.model_dir``)."""
    top: dict[str, object] = {}
    nested: dict[str, dict[str, object]] = {}
    for name, value in updates.items():
        head, _, rest = name.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = with_fields(getattr(model, head), inner)
    return model.model_copy(update=top)
