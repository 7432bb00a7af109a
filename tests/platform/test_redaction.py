"""What leaves the control service names no server path (control/redaction.py): the rules, and a
large text artifact streamed in pieces with a path across two of them."""

import json

from gpo_services.common.settings import Settings
from gpo_services.control.redaction import Redactor, job_redactor
from gpo_services.control.routes.jobs import SNAPSHOT_BYTES, redacted_chunks


def test_paths_become_the_names_the_tenant_knows(tmp_path) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", artifacts=tmp_path / "art", cache_dir=tmp_path / "cache")
    upload = tmp_path / "art" / ".uploads" / "f00d" / ".admitted" / "sha-1.jsonl"
    redactor = job_redactor(settings, "job1", json.dumps({str(upload): "data:pairs.jsonl"}))
    text = (f"{upload}:3: field 'prompt' is missing; see {tmp_path}/art/job1/runs/r0/train/final and "
            f"{tmp_path}/art/other/x and {tmp_path}/cache/tasks/t and {tmp_path}/art")  # fmt: skip
    assert redactor.text(text) == ("data:pairs.jsonl:3: field 'prompt' is missing; see runs/r0/train/final and "
                                   "<artifacts>/other/x and <cache>/tasks/t and <artifacts>")  # fmt: skip
    assert Redactor({"/srv/a": "X"}).text("/srv/a /srv/ab /srv/a/b") == "X /srv/ab X/b"  # whole names only


def test_a_large_text_artifact_is_redacted_in_pieces_without_splitting_a_path(tmp_path) -> None:
    secret = "/srv/artifacts/.uploads/f00d/pairs.jsonl"
    redactor = Redactor({secret: "data:pairs.jsonl"})
    path = tmp_path / "metrics.jsonl"
    line = json.dumps({"message": f"{secret}: bad", "padding": "x" * 1000}) + "\n"
    path.write_text(line * (3 * 2**20 // len(line)) + "no newline at the end " + secret)
    body = b"".join(redacted_chunks(path, path.stat().st_size, redactor))
    assert secret.encode() not in body and body.count(b"data:pairs.jsonl") == 3 * 2**20 // len(line) + 1
    huge = tmp_path / "one-line.html"  # a page with no newline for longer than a snapshot
    huge.write_text("y" * (SNAPSHOT_BYTES - 5) + secret + '" ' + "y" * 2**20)  # the path across the first cut
    shown = b"".join(redacted_chunks(huge, huge.stat().st_size, redactor))
    assert secret.encode() not in shown and b"data:pairs.jsonl" in shown
