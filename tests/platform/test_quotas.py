"""Per-tenant limits over HTTP (issue 17, item 4): a request rate and a number of queued and running
runs, each refused with a 429 and Retry-After, each per tenant (the other tenant keeps working)."""

import httpx
import pytest

from gpo_client import Client, TooManyRequests
from tests.platform.conftest import TENANT_KEYS, serving

KEY_A, KEY_B = list(TENANT_KEYS)
SPEC = {"task": {"size": "small"}, "losses": ["logistic", "hinge"], "betas": [0.1, 1.0]}  # 4 runs


@pytest.fixture
def limited(settings, redis_client):
    with serving(settings.model_copy(update={"rate_limit_per_minute": 5, "max_active_runs": 6})) as url:
        yield url


@pytest.fixture
def quota_only(settings, redis_client):
    with serving(settings.model_copy(update={"max_active_runs": 6})) as url:
        yield url


def test_requests_over_the_rate_are_429_with_retry_after_per_tenant(limited) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    answers = [httpx.get(limited + "/jobs", headers=headers) for _ in range(7)]
    statuses = [a.status_code for a in answers]
    if 429 in statuses[:5]:  # the clock minute turned during the burst: counted afresh
        answers = [httpx.get(limited + "/jobs", headers=headers) for _ in range(7)]
        statuses = [a.status_code for a in answers]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
    refused = answers[-1]
    assert refused.json()["error"] == "rate_limited" and 1 <= int(refused.headers["retry-after"]) <= 60
    assert httpx.get(limited + "/jobs", headers={"Authorization": f"Bearer {KEY_B}"}).status_code == 200
    assert httpx.get(limited + "/healthz").status_code == 200  # health is not a tenant's request


def test_a_job_over_the_tenants_run_quota_is_429_and_names_the_limit(quota_only) -> None:
    with Client(quota_only, KEY_A) as client_a, Client(quota_only, KEY_B) as client_b:
        first = client_a.submit(SPEC)
        with pytest.raises(TooManyRequests) as refused:
            client_a.submit(SPEC)  # 4 + 4 > 6
        assert refused.value.code == "quota" and refused.value.retry_after == 30
        assert "you have 4 runs queued or running; at most 6" in refused.value.message
        assert [j.id for j in client_a.list().jobs] == [first.id]
        client_b.submit(SPEC)  # the other tenant's quota is its own
        client_a.cancel(first.id)
        client_a.submit(SPEC)  # a job that is over frees its runs
