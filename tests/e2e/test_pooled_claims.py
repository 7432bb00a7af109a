"""``gpo claims``: the same grid run with other base seeds, each job's claims and all seeds pooled."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpo_core.sweep.pooled import PoolError, pooled_claims
from gpo_core.sweep.runner import run_job
from gpo_core.sweep.spec import JobSpec

GPO = shutil.which("gpo", path=str(Path(sys.executable).parent))


def grid(seed: int, **overrides) -> dict:
    """Two losses at a beta inside [0.1, 1] and one outside, two seeds from ``seed``: every claim has its inputs."""
    return {
        "name": f"base-seed-{seed}",
        "task": {"size": "small", "seed": 3},
        "losses": ["logistic", "square"],
        "betas": [0.1, 3.0],
        "seeds": 2,
        "training": {"steps": 4, "lr": 5e-3, "batch_size": 8, "trace_every": 2, "checkpoint_every": 0,
                     "trace_prompts": 4, "seed": seed},
        "generation": {"backend": "transformers", "prompts": 6},
        "comparisons": {"claims": True},
        **overrides,
    }  # fmt: skip


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory) -> tuple[Path, Path]:
    """One grid trained with seeds 0 and 1, then again with seeds 2 and 3."""
    root = tmp_path_factory.mktemp("pooled")
    for seed in (0, 2):
        run_job(JobSpec(**grid(seed)), root / f"seed{seed}", cache_dir=root / "cache")
    return root / "seed0", root / "seed2"


def test_each_jobs_claims_are_its_reports_and_the_pool_decides_on_every_seed(two_jobs) -> None:
    first, second = two_jobs
    pooled = pooled_claims([first, second])
    assert [job["seeds"] for job in pooled["jobs"]] == [[0, 1], [2, 3]] and pooled["seeds"] == [0, 1, 2, 3]
    for job, folder in zip(pooled["jobs"], two_jobs, strict=True):  # a job alone: what its own report decided
        report = json.loads((folder / "report" / "report.json").read_text())
        assert [c["verdict"] for c in job["claims"]] == [c["verdict"] for c in report["claims"]]
        assert job["cells"] == report["cells"]
    reports = [json.loads((folder / "report" / "report.json").read_text()) for folder in two_jobs]
    runs = {r["id"]: r for report in reports for r in report["runs"]}
    cell = next(c for c in pooled["cells"] if c["id"] == "r00-logistic-b0.1")
    assert sorted(cell["judged"]) == ["0", "1", "2", "3"] and cell["win_rate"]["seeds"] == 4
    rates = [runs[f"r00-logistic-b0.1-s{s}"]["judgement"]["win_rate"]["rate"] for s in range(4)]
    assert cell["win_rate"]["rate"] == pytest.approx(sum(rates) / 4)  # each run judged on the same prompts
    # C2 on four seeds as blocks: 2 losses x 4 seeds leave (2 - 1) x (4 - 1) = 3 degrees of freedom.
    on_par = next(c for c in pooled["claims"] if c["claim"] == "C2")
    assert on_par["method"] == "seeds" and on_par["dof"] == [1, 3]
    first_claims, second_claims = (job["claims"] for job in pooled["jobs"])
    differ = [a["claim"] for a, b in zip(first_claims, second_claims, strict=True) if a["verdict"] != b["verdict"]]
    assert pooled["verdicts_differ"] == differ


def test_gpo_claims_prints_the_verdicts_by_job_and_pooled(two_jobs) -> None:
    assert GPO, "the gpo console script is not installed in this environment"
    result = subprocess.run([GPO, "claims", *map(str, two_jobs)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for heading in ("seed0 (seeds 0, 1)", "seed2 (seeds 2, 3)", "pooled (seeds 0, 1, 2, 3)"):
        assert heading in result.stdout
    assert "F(1, 3) = " in result.stdout  # C2 on four seeds as blocks
    assert "best in [0.1, 1] (0.1) minus best outside (3)" in result.stdout  # C1 too
    assert "every job gives the same verdicts" in result.stdout or "change with the seeds" in result.stdout
    as_json = subprocess.run([GPO, "claims", str(two_jobs[0]), "--json"], capture_output=True, text=True, timeout=300)
    assert json.loads(as_json.stdout)["seeds"] == [0, 1]


def test_jobs_that_are_not_one_grid_or_repeat_a_seed_are_refused(two_jobs, tmp_path) -> None:
    first, _ = two_jobs
    with pytest.raises(PoolError, match=r"seed 0 was trained by .*seed0 too"):
        pooled_claims([first, first])
    other = tmp_path / "other"
    other.mkdir()
    job = json.loads((first / "job.json").read_text())
    job["spec"] = {**job["spec"], "betas": [0.1, 1.0], "training": {**job["spec"]["training"], "seed": 7}}
    (other / "job.json").write_text(json.dumps(job))
    with pytest.raises(PoolError, match=r"other: not the same grid as .*seed0 \(betas differ\)"):
        pooled_claims([first, other])
    with pytest.raises(PoolError, match=r"nowhere: not a job folder"):
        pooled_claims([first, tmp_path / "nowhere"])
    result = subprocess.run([GPO, "claims", str(first), str(other)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "error:" in result.stderr and "betas differ" in result.stderr
    assert "Traceback" not in result.stderr
