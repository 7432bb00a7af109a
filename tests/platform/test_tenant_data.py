"""Tenant-owned data (issue 17, item 1): a job reads only its tenant's uploads and the operator's
read-only roots. Each attack of the issue is replayed over HTTP against the real service: naming
another tenant's upload or job folder, a server file, a link out of a read root; and the answers
for "missing" and "forbidden" are the same, so the API tells nothing about what exists."""

import hashlib
import json
import os

import httpx
import pytest

from gpo_client import Client
from gpo_client.sdk import ApiError
from gpo_services.common.settings import Settings
from tests.platform.conftest import TENANT_KEYS, serving

KEY_A, KEY_B = list(TENANT_KEYS)
PAIRS = [{"prompt": f"post {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
PROMPTS = [{"id": f"p{i}", "prompt": f"post {i}"} for i in range(3)]


@pytest.fixture
def shared(tmp_path):
    """The operator's read-only root, with a base model folder in it."""
    root = tmp_path / "shared"
    (root / "base-model").mkdir(parents=True)
    (root / "base-model" / "config.json").write_text("{}")
    return root


@pytest.fixture
def service(settings, redis_client, shared):
    configured = settings.model_copy(update={"read_roots": [shared], "max_upload_bytes": 64 * 1024})
    with serving(configured) as url:
        yield url, configured


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def spec(**paths) -> dict:
    """A sweep on the tenant's own model and data, judged by a local model from the read root."""
    return {"losses": ["logistic"], "betas": [0.1], **paths,
            "judge": {"kind": "local", "model_dir": paths["policy"]}}  # fmt: skip


def submit(url: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/jobs", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_upload_list_use_and_delete(service, shared, tmp_path) -> None:
    url, _ = service
    pairs = jsonl(tmp_path / "pairs.jsonl", PAIRS)
    with Client(url, KEY_A) as a, Client(url, KEY_B) as b:
        record = a.upload(pairs)
        assert record["sha256"] == hashlib.sha256(pairs.read_bytes()).hexdigest()
        assert record["records"] == 5 and record["reference"] == "data:pairs.jsonl"
        a.upload(jsonl(tmp_path / "p.jsonl", PROMPTS), name="prompts.jsonl", kind="prompts")
        assert [u["name"] for u in a.uploads()] == ["pairs.jsonl", "prompts.jsonl"]
        assert b.uploads() == []  # each tenant sees its own
        job = a.submit(spec(policy=str(shared / "base-model"), dataset="data:pairs.jsonl",
                            eval_prompts="data:prompts.jsonl"))  # fmt: skip
        assert job.state == "queued"
        a.delete_upload("pairs.jsonl")
        assert [u["name"] for u in a.uploads()] == ["prompts.jsonl"]
        with pytest.raises(ApiError) as gone:
            a.delete_upload("pairs.jsonl")
        assert gone.value.status == 404


def test_another_tenants_data_and_server_paths_are_refused_alike(service, shared, tmp_path) -> None:
    url, settings = service
    with Client(url, KEY_A) as a:
        a.upload(jsonl(tmp_path / "secret.jsonl", PROMPTS), kind="prompts")
        a_job = a.submit({"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1]})
    a_upload = next(p for p in (settings.artifacts / ".uploads").iterdir() if p.name != ".tenants") / "secret.jsonl"
    a_job_folder = settings.artifacts / a_job.id
    a_job_folder.mkdir(parents=True, exist_ok=True)
    (shared / "escape").symlink_to(a_upload)  # a link inside the read root pointing at tenant data
    attempts = {
        "data:secret.jsonl": "A's upload by its name",
        "data:never-uploaded.jsonl": "an upload nobody made",
        str(a_upload): "A's upload by its server path",
        str(a_job_folder): "A's job folder",
        str(shared / "escape"): "a link out of the read root",
        "/etc/shadow": "a server file that exists",
        "/etc/no-such-file": "one that does not",
        "shared/base-model": "a relative path",
        str(settings.artifacts): "the artifact root",
    }
    answers = {}
    for value in attempts:
        body = spec(policy=str(shared / "base-model"), dataset=str(shared / "base-model" / "config.json"),
                    eval_prompts=value)  # fmt: skip
        response = submit(url, KEY_B, body)
        assert response.status_code == 422, (attempts[value], response.text)
        (detail,) = response.json()["details"]
        assert detail["field"] == "eval_prompts"
        answers[value] = detail["message"].replace(repr(value), "VALUE")
    # Missing and forbidden look the same: an upload name as one that was never made, a server path
    # as any other (the answer depends on the form the tenant wrote, never on what the server holds).
    by_form = {(value.startswith("data:"), answer) for value, answer in answers.items()}
    assert len(by_form) == 2, answers
    assert "gpo data push FILE" in answers["data:secret.jsonl"] and "upload your file" in answers["/etc/shadow"]


def test_uploads_are_validated_bounded_and_leave_nothing_when_refused(service, tmp_path) -> None:
    url, settings = service
    bad = jsonl(tmp_path / "bad.jsonl", [*PAIRS[:2], {"prompt": "p", "chosen": "c"}])
    with Client(url, KEY_A) as a:
        with pytest.raises(ApiError) as invalid:
            a.upload(bad)
        assert invalid.value.status == 422 and "bad.jsonl:3" in invalid.value.message
        assert str(settings.artifacts) not in invalid.value.message  # no server path in the answer
        for line, message in (
            (b"[" * 20_000 + b"]" * 20_000, "bad.jsonl:1: JSON nested too deeply"),
            (b'{"prompt": ' + b"9" * 5_000 + b"}", "bad.jsonl:1: not usable JSON"),
        ):
            (tmp_path / "bad.jsonl").write_bytes(line + b"\n")  # each answered 500 before
            with pytest.raises(ApiError) as crafted:
                a.upload(tmp_path / "bad.jsonl")
            assert crafted.value.status == 422 and message in crafted.value.message
        big = tmp_path / "big.jsonl"
        jsonl(big, PAIRS * 400)  # about 100 KB, over the 64 KiB limit of this service
        with pytest.raises(ApiError) as too_large:
            a.upload(big)
        assert too_large.value.status == 413
        assert a.uploads() == []
    folder = next(p for p in (settings.artifacts / ".uploads").iterdir() if p.name != ".tenants")
    assert os.listdir(folder) == []  # no partial file left behind


@pytest.mark.parametrize("name", ["../x.jsonl", ".hidden.jsonl", "x.txt", "a" * 120 + ".jsonl"])
def test_upload_names_are_plain_file_names(service, name) -> None:
    url, _ = service
    response = httpx.put(f"{url}/data/{name}", content=b"{}", headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code in (404, 422), response.text


def test_a_read_root_may_not_hold_tenant_data(tmp_path) -> None:
    with pytest.raises(ValueError, match="GPO_READ_ROOTS"):
        Settings(artifacts=tmp_path / "artifacts", read_roots=[tmp_path])
    with pytest.raises(ValueError, match="GPO_READ_ROOTS"):
        Settings(artifacts=tmp_path / "artifacts", read_roots=[tmp_path / "artifacts" / "job"])
    assert Settings(artifacts=tmp_path / "artifacts", read_roots=[tmp_path / "models"]).read_roots


def test_a_parquet_bomb_is_refused_in_a_child_while_the_service_answers_others(settings, redis_client, tmp_path):
    """Issue 27, finding 5: a 127 KB Parquet upload took the control process from 357 MiB to 1,777 MiB
    and stalled other tenants' requests for seconds. It is read in a limited child now: a 422, the
    serving process does not grow, and another tenant's requests keep answering."""
    import threading
    import time

    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 1_000_000
    text = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * 2000]))  # one value
    bomb = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"prompt": text, "chosen": text, "rejected": text}), bomb, compression="zstd")
    assert bomb.stat().st_size < 1_000_000  # under a megabyte that reads as 6 GB of text
    limited = settings.model_copy(update={"upload_check_memory_bytes": 512 * 2**20, "rate_limit_per_minute": 0})
    with serving(limited) as url:
        before = psutil.Process().memory_info().rss
        latencies: list[float] = []
        done = threading.Event()

        def other_tenant() -> None:
            while not done.is_set():
                started = time.perf_counter()
                assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {KEY_B}"}).status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

        watcher = threading.Thread(target=other_tenant)
        watcher.start()
        try:
            response = httpx.put(f"{url}/data/bomb.parquet", content=bomb.read_bytes(),
                                 headers={"Authorization": f"Bearer {KEY_A}"}, timeout=300)  # fmt: skip
        finally:
            done.set()
            watcher.join()
        assert response.status_code == 422, response.text
        assert "bomb.parquet" in response.json()["message"] and "memory" in response.json()["message"]
        assert psutil.Process().memory_info().rss - before < 300 * 2**20
        latencies.sort()
        assert latencies and latencies[int(0.99 * (len(latencies) - 1))] < 1.0, latencies[-5:]


def test_a_misspelt_upload_name_gets_a_did_you_mean_from_ones_own_uploads(service, tmp_path) -> None:
    url, _ = service
    with Client(url, KEY_A) as a:
        a.upload(jsonl(tmp_path / "prompts.jsonl", PROMPTS), kind="prompts")
    body = spec(policy="model:none", dataset="data:pairs.jsonl", eval_prompts="data:prompt.jsonl")
    details = {d["field"]: d["message"] for d in submit(url, KEY_A, body).json()["details"]}
    assert "did you mean 'data:prompts.jsonl'?" in details["eval_prompts"]
    assert "upload it first (gpo model push FOLDER --name NAME" in details["policy"]
    theirs = {d["field"]: d["message"] for d in submit(url, KEY_B, body).json()["details"]}
    assert "did you mean" not in theirs["eval_prompts"]  # never another tenant's names
