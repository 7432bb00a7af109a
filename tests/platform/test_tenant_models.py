"""Tenant-owned models (issue 17, item 1): a model folder uploaded as a tar archive, checked before
anything reads it, stored per tenant, named model:NAME in job specs and nowhere else. Archives that
would write outside the folder, carry links or pickles, or ask for remote code are refused with
the member named; another tenant's model answers as a missing one."""

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import httpx
import pytest

from gpo_client import Client
from gpo_client.sdk import ApiError, InvalidSpec
from gpo_core.models import load_model
from tests.platform.conftest import TENANT_KEYS, serving

KEY_A, KEY_B = list(TENANT_KEYS)
PAIRS = b'{"prompt": "post", "chosen": "good", "rejected": "bad"}\n'
PROMPTS = b'{"id": "p0", "prompt": "post"}\n'


@pytest.fixture
def service(settings, redis_client):
    with serving(settings.model_copy(update={"max_model_upload_bytes": 64 * 2**20})) as url:
        yield url, settings


@pytest.fixture
def model_folder(small_task, tmp_path):
    return shutil.copytree(small_task.artifacts.model_dir, tmp_path / "tiny")


def spec(model: str) -> dict:
    return {"policy": model, "dataset": "data:pairs.jsonl", "eval_prompts": "data:prompts.jsonl",
            "losses": ["logistic"], "betas": [0.1], "judge": {"kind": "local", "model_dir": model}}  # fmt: skip


def archive(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def put(url: str, name: str, body: bytes, key: str = KEY_A) -> httpx.Response:
    return httpx.put(f"{url}/models/{name}", content=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_a_model_is_uploaded_checked_listed_used_and_deleted(service, model_folder, redis_client) -> None:
    url, settings = service
    with Client(url, KEY_A) as a, Client(url, KEY_B) as b:
        record = a.upload_model(model_folder)
        assert record["reference"] == "model:tiny" and record["model_type"] == "llama"
        assert record["parameters"] > 10_000 and "model.safetensors" in record["files"]
        assert [m["name"] for m in a.models()] == ["tiny"] and b.models() == []
        stored = settings.artifacts / ".uploads"
        folder = next(p for p in stored.rglob("tiny") if p.is_dir())
        assert load_model(folder) is not None  # what a worker will open loads as a model

        httpx.put(f"{url}/data/pairs.jsonl", content=PAIRS, headers={"Authorization": f"Bearer {KEY_A}"})
        httpx.put(f"{url}/data/prompts.jsonl", params={"kind": "prompts"}, content=PROMPTS,
                  headers={"Authorization": f"Bearer {KEY_A}"})  # fmt: skip
        job = a.submit(spec("model:tiny"))
        saved = json.loads(redis_client.hget(f"gpo:job:{job.id}", "spec"))
        # The job reads the model as it was admitted: its files, linked under the tenant's folder.
        admitted = Path(saved["policy"])
        assert saved["judge"]["model_dir"] == saved["policy"] and ".admitted" in admitted.parts
        assert sorted(p.name for p in admitted.iterdir()) == sorted(p.name for p in folder.iterdir())
        assert (admitted / "model.safetensors").stat().st_ino == (folder / "model.safetensors").stat().st_ino

        with pytest.raises(InvalidSpec) as theirs:  # another tenant's model: as if it did not exist
            b.submit({**spec("model:tiny"), "dataset": "data:pairs.jsonl"})
        with pytest.raises(InvalidSpec) as missing:
            a.submit(spec("model:nothing"))
        policy = next(d["message"] for d in theirs.value.details if d["field"] == "policy")
        assert policy.replace("'model:tiny'", "X") == next(
            d["message"] for d in missing.value.details if d["field"] == "policy"
        ).replace("'model:nothing'", "X")

        a.delete_model("tiny")
        assert a.models() == [] and not folder.exists()
        with pytest.raises(InvalidSpec):
            a.submit(spec("model:tiny"))


CONFIG = json.dumps({"model_type": "llama"}).encode()
WEIGHTS = b"\x13\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{}}'  # a safetensors file of no tensors


@pytest.mark.parametrize(
    ("files", "links", "message"),
    [
        ({"config.json": CONFIG, "../../evil.json": b"{}"}, None, "../../evil.json: a path outside the model folder"),
        ({"config.json": CONFIG, "/etc/cron.d/x.json": b"{}"}, None, "a path outside the model folder"),
        ({"config.json": CONFIG}, {"model.safetensors": "/etc/shadow"}, "only regular files are accepted"),
        ({"config.json": CONFIG, "pytorch_model.bin": b"\x80\x04"}, None, "weights must be safetensors"),
        ({"config.json": CONFIG, "run.py": b"import os"}, None, "run.py: not a model file"),
        ({"config.json": json.dumps({"model_type": "x", "auto_map": {"AutoModel": "m.M"}}).encode(),
          "model.safetensors": b""}, None, "auto_map asks for the model's own code"),
        ({"config.json": CONFIG}, None, "no .safetensors weights"),
        ({"config.json": CONFIG, "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}"}, None,
         "model.safetensors: not a readable safetensors file"),
        ({"a/config.json": CONFIG, "b/config.json": CONFIG}, None, "exactly one config.json"),
        # Crafted members that answered 500 (issue 27's low findings; found again by a probe):
        ({"config.json": CONFIG, "model.safetensors": WEIGHTS, "tokenizer.json": b"[" * 100_000 + b"]" * 100_000},
         None, "tokenizer.json: JSON nested too deeply"),
        ({"config.json": b'{"model_type": "llama", "x": ' + b"9" * 100_000 + b"}", "model.safetensors": WEIGHTS},
         None, "config.json: not usable JSON"),
        ({"config.json": CONFIG, "model.safetensors": WEIGHTS, "adapter_config.json": b"[1]"}, None,
         "adapter_config.json: base_model_name_or_path must name one of your models"),
        ({"x.json": b"{}", "x.json/y.json": b"{}", "config.json": CONFIG}, None, "both a file and a folder"),
    ],
)  # fmt: skip
def test_hostile_or_broken_archives_are_refused_naming_the_member(service, files, links, message) -> None:
    url, settings = service
    response = put(url, "bad", archive(files, links))
    assert response.status_code == 422, response.text
    assert message in response.json()["message"]
    leftovers = [p for p in (settings.artifacts / ".uploads").rglob("*") if p.is_file() and p.parent.name != ".tenants"]
    assert leftovers == []  # nothing kept of a refused upload (only the tenant's folder index)
    assert not any(p.name == "evil.json" for p in settings.artifacts.parent.rglob("evil.json"))


def test_archives_that_are_not_tar_or_too_large_are_refused(service) -> None:
    url, _ = service
    assert put(url, "junk", b"not a tar archive at all").status_code == 422
    truncated = gzip.compress(archive({"config.json": CONFIG}))[:40]  # a gzip stream cut short: it answered 500
    assert "not a readable tar archive" in put(url, "cut", truncated).json()["message"]
    big = put(url, "big", b"\x00" * (65 * 2**20))
    assert big.status_code == 413
    assert httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY_A}"}).json() == []
    with pytest.raises(ApiError) as refused:
        Client(url, KEY_A).delete_model("never")
    assert refused.value.status == 404


def _adapter(base_folder, out, base_named: str):
    """A real peft LoRA adapter on ``base_folder``, whose config names its base as ``base_named``
    (what the tenant's file says), with the base's config.json beside it."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(base_folder), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base_named}))
    shutil.copy(base_folder / "config.json", out / "config.json")
    return out


def test_an_adapter_never_reaches_another_tenants_model_through_its_config(service, model_folder, tmp_path) -> None:
    """Issue 27, finding 1: A's adapter named B's private model as its base by a relative path (upload
    folders were named by a hash of the tenant) and a 1-step job gave A B's weights. The base is now
    resolved with the uploader's rights at upload and recorded by the platform; the adapter's own
    config is never followed, and a base A may not read answers as a missing one."""
    from gpo_core.models import ADAPTER_BASE_RECORD, adapter_base, model_digest

    url, settings = service
    with Client(url, KEY_A) as a, Client(url, KEY_B) as b:
        b.upload_model(model_folder, "secret-model")
        bobs = next(p for p in (settings.artifacts / ".uploads").rglob("secret-model") if p.is_dir())
        relative = "../../../" + bobs.relative_to(settings.artifacts / ".uploads").as_posix()
        answers = []
        for base in (relative, str(bobs), "model:secret-model", "model:no-such-model", "/etc"):
            evil = _adapter(model_folder, tmp_path / f"evil-{len(answers)}", base)
            with pytest.raises(ApiError) as refused:
                a.upload_model(evil, "evil")
            assert refused.value.status == 422
            answers.append(str(refused.value).replace(repr(base), "BASE"))
        assert len(set(answers)) == 1, answers  # forbidden and missing alike: no oracle
        assert "base_model_name_or_path must name one of your models" in answers[0]
        assert a.models() == []

        a.upload_model(model_folder, "mine")
        record = a.upload_model(_adapter(model_folder, tmp_path / "good", "model:mine"), "good")
        assert record["reference"] == "model:good"
        good = next(p for p in (settings.artifacts / ".uploads").rglob("good") if p.is_dir())
        mine = next(p for p in (settings.artifacts / ".uploads").rglob("mine") if p.is_dir())
        recorded = json.loads((good / ADAPTER_BASE_RECORD).read_text())
        assert recorded == {"base_model_path": str(mine.resolve()), "base_model_digest": model_digest(mine)}
        # The file still says what the tenant wrote; workers read the platform's record instead.
        (good / "adapter_config.json").write_text(
            json.dumps({**json.loads((good / "adapter_config.json").read_text()), "base_model_name_or_path": str(bobs)})
        )
        assert adapter_base(good) == mine.resolve()
        assert load_model(good) is not None

        planted = _adapter(model_folder, tmp_path / "planted", "model:mine")
        (planted / ADAPTER_BASE_RECORD).write_text(json.dumps({"base_model_path": str(bobs)}))
        with pytest.raises(ApiError, match="a file name this platform keeps for itself"):
            a.upload_model(planted, "planted")


def test_paths_inside_an_uploads_json_files_are_dropped(service, model_folder) -> None:
    url, settings = service
    tokenizer = json.loads((model_folder / "tokenizer_config.json").read_text())
    (model_folder / "tokenizer_config.json").write_text(
        json.dumps({**tokenizer, "tokenizer_file": "/etc/passwd", "vocab_file": "../../x/vocab.json"})
    )
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "/srv/other-tenant/model"}))
    with Client(url, KEY_A) as a:
        a.upload_model(model_folder, "tidy")
    stored = next(p for p in (settings.artifacts / ".uploads").rglob("tidy") if p.is_dir())
    kept = json.loads((stored / "tokenizer_config.json").read_text())
    assert "tokenizer_file" not in kept and "vocab_file" not in kept
    assert "_name_or_path" not in json.loads((stored / "config.json").read_text())
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(stored)("post").input_ids  # still a working tokenizer


def test_a_gzip_bomb_is_refused_as_it_inflates(service) -> None:
    """Issue 27, finding 12: a 147 KB archive stored 145 MiB (with no storage quota, one upload could
    expand to the 64 GiB limit). An archive may unpack to 20x its size (at least 64 MiB)."""
    import gzip

    body = gzip.compress(archive({"config.json": CONFIG, "model.safetensors": b"\x00" * (145 * 2**20)}), 9)
    assert len(body) < 200_000
    response = put(service[0], "bomb", body)
    assert response.status_code == 422, response.text
    assert "once extracted" in response.json()["message"]
