"""Credentials belong to the operator or to the tenant, never to whatever a spec names.

An endpoint judge's key is the operator's for that endpoint (``GPO_JUDGE_ENDPOINTS`` entry
``URL=VARIABLE``: the judge worker's variable, sent to that URL only) or the tenant's own secret
(``PUT /secrets/NAME``, named in the spec as ``judge.api_key_secret``). A spec cannot name a
worker's variable: the control service refuses ``judge.api_key_env``, which only the embedded
runner (a user's own machine) reads. The key reaches a task's child in its payload, never in its
environment; no endpoint returns a secret, and no log, event or artifact holds one."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from gpo_core.sweep.spec import JobSpec, JobSpecError

if TYPE_CHECKING:
    from gpo_services.common.worker import TaskContext


def judge_api_key(spec: JobSpec, job_id: str, context: TaskContext, field: str = "judge") -> str | None:
    """The key ``spec``'s judge (or the judge at ``field``: ``online.annotator``) sends (None: no
    endpoint judge, or an endpoint that takes none)."""
    judge = spec.judges()[field]
    if not judge.calls_endpoint or judge.base_url is None:
        return None
    if judge.api_key_secret is not None:
        tenant = context.store.tenant(job_id)
        value = context.store.secret(tenant, judge.api_key_secret) if tenant is not None else None
        if value is None:
            raise JobSpecError(
                f"{field}.api_key_secret: you have no secret {judge.api_key_secret!r} (PUT /secrets/NAME)"
            )
        return value
    variable = context.settings.judge_key_variable(judge.base_url)
    return os.environ.get(variable) if variable else None
