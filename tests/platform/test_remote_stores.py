"""Models and data at object-store URIs (issue 17, item 1), against a real S3-compatible server on
loopback (moto's server): the operator enables prefixes (GPO_REMOTE_ROOTS); a job may name objects
under them and nothing else (another bucket, another prefix, a walk out with ..); workers copy
what a job names into the cache once, and again only when the objects change."""

import shutil
import subprocess
import sys

import httpx
import pytest

from gpo_core.models import load_model
from gpo_core.remote import materialize, normalized, under
from tests.platform.conftest import TENANT_KEYS, serving, wait_until
from tests.support.ports import free_port

KEY_A = next(iter(TENANT_KEYS))
PAIRS = b'{"prompt": "post", "chosen": "good", "rejected": "bad"}\n'
PROMPTS = b'{"id": "p0", "prompt": "post"}\n'


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free loopback port, in its own process (Flask, which it runs on, must
    stay out of this one: vLLM walks every loaded module's globals, and Flask's proxies raise), with
    the environment s3fs reads."""
    pytest.importorskip("s3fs")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(endpoint), 60, "moto's server")
    patch = pytest.MonkeyPatch()
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        patch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    filesystem = s3fs.S3FileSystem(endpoint_url=endpoint)
    filesystem.mkdir("shared")
    filesystem.mkdir("private")
    yield filesystem
    patch.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    server.terminate()
    server.wait(timeout=10)
    log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stored(s3, small_task):
    s3.put(small_task.artifacts.model_dir, "shared/base/tiny", recursive=True)
    s3.pipe("shared/base/pairs.jsonl", PAIRS)
    s3.pipe("shared/base/prompts.jsonl", PROMPTS)
    s3.pipe("private/secret.jsonl", PAIRS)
    return s3


def test_uri_prefixes_are_compared_segment_by_segment() -> None:
    roots = ["s3://shared/base/"]
    assert under("s3://shared/base/tiny", roots) and under("S3://shared/base", roots)
    outsiders = ["s3://shared/basement/x", "s3://shared/base/../private/x", "s3://private/x", "s3://shared/base/./x",
               "s3://shared//base/x", "s3://u:p@shared/base/x", "gs://shared/base/x"]  # fmt: skip
    for uri in outsiders:
        assert not under(uri, roots), uri
    assert normalized("s3://shared/base/tiny/") == "s3://shared/base/tiny"


def test_a_job_names_objects_under_the_enabled_prefixes_only(stored, settings, redis_client) -> None:
    enabled = settings.model_copy(update={"remote_roots": ["s3://shared/base/"]})
    spec = {"policy": "s3://shared/base/tiny", "dataset": "s3://shared/base/pairs.jsonl",
            "eval_prompts": "s3://shared/base/prompts.jsonl", "losses": ["logistic"], "betas": [0.1],
            "judge": {"kind": "local", "model_dir": "s3://shared/base/tiny"}}  # fmt: skip
    headers = {"Authorization": f"Bearer {KEY_A}"}
    with serving(enabled) as url:
        accepted = httpx.post(url + "/jobs", json=spec, headers=headers)
        assert accepted.status_code == 201, accepted.text
        answers = {}
        for uri in ("s3://private/secret.jsonl", "s3://shared/base/../../private/secret.jsonl",
                    "s3://shared/base/missing.jsonl"):  # fmt: skip
            response = httpx.post(url + "/jobs", json={**spec, "dataset": uri}, headers=headers)
            assert response.status_code == 422, uri
            answers[uri] = next(d["message"] for d in response.json()["details"] if d["field"] == "dataset")
        assert len({m.replace(u, "X") for u, m in answers.items()}) == 1  # forbidden and missing alike
    with serving(settings) as url:  # no prefixes enabled: no URI at all
        assert httpx.post(url + "/jobs", json=spec, headers=headers).status_code == 422


def test_workers_copy_objects_once_and_again_when_they_change(stored, tmp_path) -> None:
    model = materialize("s3://shared/base/tiny", tmp_path)
    assert load_model(model) is not None and (model / "config.json").is_file()
    assert materialize("s3://shared/base/tiny", tmp_path) == model  # cached: the same copy
    pairs = materialize("s3://shared/base/pairs.jsonl", tmp_path)
    assert pairs.read_bytes() == PAIRS
    stored.pipe("shared/base/pairs.jsonl", PAIRS * 2)
    changed = materialize("s3://shared/base/pairs.jsonl", tmp_path)
    assert changed != pairs and changed.read_bytes() == PAIRS * 2
    shutil.rmtree(tmp_path / "remote")
    assert materialize("s3://shared/base/pairs.jsonl", tmp_path).read_bytes() == PAIRS * 2


def test_a_stage_reads_a_jobs_uris_from_local_copies(stored, tmp_path, monkeypatch) -> None:
    from gpo_core.sweep import stages
    from gpo_core.sweep.spec import JobSpec

    monkeypatch.setenv("GPO_CACHE_DIR", str(tmp_path))
    spec = JobSpec(policy="s3://shared/base/tiny", dataset="s3://shared/base/pairs.jsonl",
                   eval_prompts="s3://shared/base/prompts.jsonl", losses=["logistic"], betas=[0.1],
                   judge={"kind": "local", "model_dir": "s3://shared/base/tiny"})  # fmt: skip
    inputs = stages.resolve_inputs(spec)
    assert inputs.policy == inputs.reference and inputs.policy.startswith(str(tmp_path / "remote"))
    assert stages.evaluation_prompts(spec, inputs) == [{"id": "p0", "prompt": "post"}]
