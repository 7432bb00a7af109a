"""The gpo command line against the local stack it starts: up (in a folder of its own, found by
every later command), submit --watch (its exit code), list, status, report (downloaded), cancel of
a finished job (a clear error), down."""

import json
import os
import subprocess
import sys

import pytest
import redis
import yaml

pytestmark = pytest.mark.slow


def gpo(*args: str, env: dict, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from gpo_client.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_up_submit_watch_status_report_down(tmp_path) -> None:
    env = {**os.environ, "HOME": str(tmp_path / "home"), "GPO_CACHE_DIR": str(tmp_path / "cache")}
    for name in ("GPO_SERVER", "GPO_API_KEY", "GPO_STACK_DIR"):
        env.pop(name, None)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "cli", "task": {"size": "small", "seed": 3}, "losses": ["hinge"], "betas": [1.0],
        "training": {"steps": 20, "batch_size": 8, "trace_every": 0},  # 4 steps: all ties, inconclusive
        "generation": {"backend": "transformers", "prompts": 8},
    }))  # fmt: skip
    up = gpo("up", "--dir", str(tmp_path / "stack"), env=env, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        assert "control service: http://127.0.0.1:" in up.stdout
        record = tmp_path / "stack" / "stack.json"  # holds the API key and Redis's password
        assert record.stat().st_mode & 0o777 == 0o600
        stack = json.loads(record.read_text())
        assert f"export GPO_SERVER={stack['server']} GPO_API_KEY={stack['api_key']}" in up.stdout
        redis_url = json.loads(record.read_text())["redis_url"]
        with pytest.raises(redis.AuthenticationError):  # another local user, on the loopback port
            redis.Redis(port=redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]).ping()
        assert redis.Redis.from_url(redis_url).ping()
        submitted = gpo("submit", str(spec), "--watch", env=env, cwd=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split()[0]
        assert "succeeded" in submitted.stdout and "r00-hinge-b1" in submitted.stdout
        assert "Best: " in submitted.stdout and f"gpo report {job_id} --open" in submitted.stdout  # as gpo run ends
        assert "preflight: data, tokenizer and judge checked; judge probe: decided" in " ".join(
            (submitted.stdout + submitted.stderr).split()
        )  # the preflight's word on the judge, before any training
        # Issue 27, finding 11: uploads, Redis's append-only file and logs were world-readable.
        kept = [p for p in (tmp_path / "stack").rglob("*") if not p.is_symlink()]
        assert (tmp_path / "stack").stat().st_mode & 0o777 == 0o700
        assert [p for p in kept if p.stat().st_mode & 0o077] == []  # files 0600, folders 0700
        assert any("appendonly" in p.name for p in kept) and any(p.name == "job.json" for p in kept)
        listed = gpo("list", env=env, cwd=tmp_path)
        assert job_id in listed.stdout and "1/1" in listed.stdout
        status = gpo("status", job_id, env=env, cwd=tmp_path)
        assert "done" in status.stdout and "20/20" in status.stdout
        report = gpo("report", job_id, env=env, cwd=tmp_path)
        assert report.returncode == 0, report.stderr
        page = tmp_path / "outputs" / "reports" / job_id / "report.html"
        assert page.exists() and json.loads(page.with_name("report.json").read_text())["runs"][0]["trained"]
        refused = gpo("cancel", job_id, env=env, cwd=tmp_path)
        assert (
            refused.returncode == 2 and "409 conflict: job" in refused.stderr and "already succeeded" in refused.stderr
        )
        missing = gpo("status", "nope", env=env, cwd=tmp_path)
        assert missing.returncode == 2 and "404 not_found" in missing.stderr
        long = tmp_path / "long.yaml"
        long.write_text(yaml.safe_dump({**yaml.safe_load(spec.read_text()), "training": {"steps": 10_000}}))
        command = [sys.executable, "-c", "from gpo_client.cli import main; main()", "submit", str(long), "--watch"]
        watching = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        long_id = watching.stdout.readline().strip()
        assert gpo("cancel", long_id, env=env, cwd=tmp_path).returncode == 0
        out, err = watching.communicate(timeout=120)
        assert watching.returncode == 1 and "cancelled" in out, err  # scripts can trust the exit code
    finally:
        down = gpo("down", env=env, cwd=tmp_path)
    assert down.returncode == 0 and "stopped: control, trainer, generator, judge, redis" in down.stdout
    unreachable = gpo("list", env=env, cwd=tmp_path)
    assert unreachable.returncode == 2 and "cannot reach the control service" in unreachable.stderr
