"""The control service over HTTP (real app, real uvicorn, real Redis): auth and tenants, spec
validation, idempotency, cancel, events, reports and artifacts, health, metrics, OpenAPI."""

import json
import os
import threading
import time

import httpx
import pytest

from gpo_client import Client, Conflict, NotFound, Unauthorized
from gpo_services.common.queue import stream_key
from tests.platform.conftest import METRICS_KEY, TENANT_KEYS, serving

KEY_A, KEY_B = list(TENANT_KEYS)
SPEC = {"task": {"size": "small"}, "losses": ["logistic", "hinge"], "betas": [0.1, 1.0]}


@pytest.fixture
def client_a(api):
    with Client(api, KEY_A) as client:
        yield client


@pytest.fixture
def client_b(api):
    with Client(api, KEY_B) as client:
        yield client


def test_submit_stores_the_job_and_queues_training(client_a, redis_client) -> None:
    job = client_a.submit(SPEC)
    assert job.state == "queued" and len(job.runs) == 4 and job.report is None
    assert redis_client.xlen(stream_key("train", "tenant-a")) == 4
    assert client_a.get(job.id) == job  # the view the submission answered is what was stored


def test_no_key_or_a_wrong_key_is_401_everywhere_but_health(api) -> None:
    paths = [("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/x"), ("POST", "/jobs/x/cancel"),
             ("GET", "/jobs/x/events"), ("GET", "/jobs/x/report"), ("GET", "/jobs/x/report.json"),
             ("GET", "/jobs/x/artifacts/job.json")]  # fmt: skip
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": KEY_A}):
        for method, path in paths:
            response = httpx.request(method, api + path, headers=headers, json=SPEC if method == "POST" else None)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"] == "unauthorized" and response.headers["www-authenticate"] == "Bearer"
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert httpx.get(api + path).status_code == 200
    with pytest.raises(Unauthorized):
        Client(api, "wrong-key-0123456789").list()


def test_another_tenants_job_is_404_on_every_job_endpoint(client_a, client_b, api) -> None:
    job = client_a.submit(SPEC)
    headers = {"Authorization": f"Bearer {KEY_B}"}
    for method, suffix in [("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/report"),
                           ("GET", "/report.json"), ("GET", "/artifacts/job.json")]:  # fmt: skip
        response = httpx.request(method, f"{api}/jobs/{job.id}{suffix}", headers=headers)
        assert response.status_code == 404 and response.json()["error"] == "not_found", suffix
    assert client_b.list().jobs == [] and [j.id for j in client_a.list().jobs] == [job.id]
    with pytest.raises(NotFound):
        client_b.cancel(job.id)
    assert client_a.get(job.id).state == "queued"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({**SPEC, "losses": ["nope"]}, "losses.0", "unknown loss 'nope'"),
        ({**SPEC, "losses": ["__import__('os').system('x')"]}, "losses.0", "unknown function"),
        ({**SPEC, "betas": [-1]}, "betas.0", "finite number > 0"),
        ({**SPEC, "betas": [0.1 * (k + 1) for k in range(32)], "losses": ["logistic", "hinge", "square", "savage"],
          "seeds": 2}, None, "at most 128"),
        ({**SPEC, "training": {"max_response_length": 0}}, "training.max_response_length", "greater than or equal"),
        ({**SPEC, "training": {"learning_rate": 1e-3}}, "training.learning_rate",
         "TRL's 'learning_rate' is 'training.lr' here"),
        ({**SPEC, "judge": {"kind": "oracle", "evaluate_on": "/etc/passwd"}}, "judge.evaluate_on",
         "is not a path this deployment lets a job read"),
        ({"losses": ["logistic"], "betas": [1], "policy": "/nonexistent/model", "dataset": "/nonexistent/pairs.jsonl",
          "eval_prompts": "/nonexistent/prompts.jsonl", "judge": {"kind": "local", "model_dir": "/nonexistent/judge"}},
         "policy", "is not a path this deployment lets a job read"),
    ],
)  # fmt: skip
def test_invalid_specs_are_422_naming_the_field(api, body, field, message) -> None:
    response = httpx.post(api + "/jobs", json=body, headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 422, response.text
    error = response.json()
    assert message in error["message"] and any(d["field"] == field for d in error["details"]), error


def test_bodies_over_the_limit_are_413_and_malformed_json_is_422(api) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"}
    big = httpx.post(api + "/jobs", content=b" " * (65 * 1024), headers=headers)
    assert big.status_code == 413 and big.json()["error"] == "too_large"
    chunked = httpx.post(api + "/jobs", content=iter([b" " * 40_000, b" " * 40_000]), headers=headers)
    assert chunked.status_code == 413
    broken = httpx.post(api + "/jobs", content=b'{"losses": [', headers=headers)
    assert broken.status_code == 422 and broken.json()["error"] == "invalid_request"


def test_idempotency_key_makes_retries_safe(client_a, api) -> None:
    first = client_a.submit(SPEC, idempotency_key="retry-me")
    response = httpx.post(
        api + "/jobs", json=SPEC, headers={"Authorization": f"Bearer {KEY_A}", "Idempotency-Key": "retry-me"}
    )
    assert response.status_code == 200 and response.headers["idempotent-replayed"] == "true"
    assert response.json()["id"] == first.id and len(client_a.list().jobs) == 1
    with pytest.raises(Conflict, match="different spec"):
        client_a.submit({**SPEC, "name": "other"}, idempotency_key="retry-me")


def test_cancel_then_cancel_again_is_409_and_events_end_with_the_job(client_a) -> None:
    job = client_a.submit(SPEC)
    assert client_a.cancel(job.id).state == "cancelled"
    with pytest.raises(Conflict, match="already cancelled"):
        client_a.cancel(job.id)
    events = list(client_a.events(job.id))
    assert [e.data["state"] for e in events if e.type == "job_state"] == ["queued", "cancelled"]
    resumed = list(client_a.events(job.id, last_event_id=events[0].id))
    assert [e.id for e in resumed] == [e.id for e in events[1:]]
    assert client_a.list(state="cancelled").jobs[0].id == job.id and client_a.list(state="running").jobs == []


def test_report_is_404_until_written_and_artifacts_never_leave_the_job_folder(
    client_a, settings, api, tmp_path
) -> None:
    job = client_a.submit(SPEC)
    with pytest.raises(NotFound, match="no report yet"):
        client_a.report_json(job.id)
    folder = settings.artifacts / job.id  # (the trainer makes it; here the test does)
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "report.json").write_text('{"runs": []}')
    (folder / "report" / "report.html").write_text("<html>report</html>")
    assert client_a.report_json(job.id) == {"runs": []} and "report" in client_a.report_html(job.id)
    assert client_a.artifact(job.id, "report/report.json") == b'{"runs": []}'
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, folder / "link.txt")
    os.symlink(tmp_path, folder / "linked-folder")
    other = client_a.submit(SPEC)
    (settings.artifacts / other.id).mkdir()
    (settings.artifacts / other.id / "job.json").write_text("not yours")
    headers = {"Authorization": f"Bearer {KEY_A}"}
    for path in ["../" + other.id + "/job.json", "..%2F" + other.id + "%2Fjob.json", "%2e%2e/%2e%2e/secret.txt",
                 "link.txt", "linked-folder/secret.txt", "report/../../secret.txt", "%2Fetc%2Fpasswd",
                 "report", "nothing-here", "..%5C..%5Csecret.txt"]:  # fmt: skip
        response = httpx.get(f"{api}/jobs/{job.id}/artifacts/{path}", headers=headers)
        assert response.status_code == 404, path
        assert b"not yours" not in response.content


def test_an_artifact_still_being_written_downloads_as_it_was(client_a, settings) -> None:
    """A running run's metrics file grows while it is served: each download is the file as it was
    when asked for (a prefix of what it becomes), never a broken response."""
    job = client_a.submit(SPEC)
    folder = settings.artifacts / job.id / "runs" / "r0"
    folder.mkdir(parents=True)
    metrics = folder / "metrics.jsonl"
    metrics.write_text("")
    stop = threading.Event()

    def append() -> None:
        with metrics.open("a") as handle:
            step = 0
            while not stop.is_set() and step < 200_000:  # bounded: about 45 MB, served as it grows
                handle.write(json.dumps({"step": step, "loss": 0.5, "padding": "x" * 200}) + "\n")
                handle.flush()
                step += 1

    writer = threading.Thread(target=append)
    writer.start()
    try:
        downloads = [client_a.artifact(job.id, "runs/r0/metrics.jsonl") for _ in range(40)]
    finally:
        stop.set()
        writer.join()
    final = metrics.read_bytes()
    assert all(final.startswith(d) for d in downloads) and len(downloads[-1]) > len(downloads[0])


def test_openapi_documents_every_endpoint_with_its_schemas(api) -> None:
    document = httpx.get(api + "/openapi.json").json()
    paths = document["paths"]
    assert set(paths) >= {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/events",
                          "/jobs/{job_id}/report", "/jobs/{job_id}/report.json", "/jobs/{job_id}/artifacts/{path}",
                          "/healthz", "/readyz", "/metrics"}  # fmt: skip
    post = paths["/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobSpec")
    assert {"201", "200", "401", "409", "413", "422"} <= set(post["responses"])
    assert {"JobSpec", "JobView", "RunView", "JobPage", "ErrorBody"} <= set(document["components"]["schemas"])


def test_readiness_and_metrics(api, client_a) -> None:
    client_a.submit(SPEC)
    assert httpx.get(api + "/readyz").json() == {"status": "ready"}
    for headers in ({}, {"Authorization": f"Bearer {KEY_A}"}):  # every tenant's figures: not for tenants
        assert httpx.get(api + "/metrics", headers=headers).status_code == 401
    text = httpx.get(api + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    assert 'gpo_queue_tasks{stage="train",state="waiting"} 4.0' in text
    assert 'gpo_http_requests_total{method="POST",route="/jobs",status="201"} 1.0' in text


def test_the_async_client_speaks_the_same_api(api) -> None:
    import asyncio

    from gpo_client import AsyncClient

    async def scenario() -> None:
        async with AsyncClient(api, KEY_A) as client:
            job = await client.submit(SPEC)
            assert (await client.get(job.id)).id == job.id
            assert [j.id for j in (await client.list()).jobs] == [job.id]
            assert (await client.cancel(job.id)).state == "cancelled"
            kinds = [event.type async for event in client.events(job.id)]
            assert kinds[0] == "job_state" and kinds[-1] == "job_state"
            assert (await client.wait(job.id)).state == "cancelled"
            with pytest.raises(NotFound):
                await client.get("nope")
        async with AsyncClient(api, "wrong-key-0123456789") as stranger:
            with pytest.raises(Unauthorized):
                await stranger.list()

    asyncio.run(scenario())


def test_metrics_and_readiness_are_as_strict_as_the_tenant_endpoints(api) -> None:
    """Issue 27, low items: /metrics took the first of two Authorization headers and a key without
    Bearer; /readyz named Redis's address to anyone; /docs loaded third-party JavaScript; reports
    had no Content-Security-Policy."""
    assert httpx.get(api + "/metrics", headers={"Authorization": METRICS_KEY}).status_code == 401
    twice = [("Authorization", f"Bearer {METRICS_KEY}"), ("Authorization", f"Bearer {KEY_A}")]
    assert httpx.get(api + "/metrics", headers=twice).status_code == 400
    assert httpx.get(api + "/metrics", headers={"Authorization": f"bearer {METRICS_KEY}"}).status_code == 200
    assert httpx.get(api + "/docs").status_code == 404 and httpx.get(api + "/redoc").status_code == 404
    answer = httpx.get(api + "/healthz")
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_readiness_names_no_address_and_answers_while_redis_is_gone(settings, redis_client) -> None:
    with serving(settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})) as url:
        started = time.monotonic()
        answer = httpx.get(url + "/readyz", timeout=10)
        assert answer.status_code == 503 and "127.0.0.1" not in answer.text and ":9" not in answer.text
        assert time.monotonic() - started < 5
