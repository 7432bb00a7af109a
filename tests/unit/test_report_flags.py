"""The report's flags on runs whose numbers need a word of explanation (gpo_core.sweep.report)."""

import json
from pathlib import Path

from gpo_core.sweep.report import read_responses, same_responses


def _responses(job: Path, run: str, texts: list[str]) -> None:
    folder = job / "runs" / run
    folder.mkdir(parents=True)
    lines = [json.dumps({"prompt_id": f"p{i}", "sample": 0, "response": t}) for i, t in enumerate(texts)]
    (folder / "responses.jsonl").write_text("\n".join(lines) + "\n")


def test_runs_with_the_same_responses_are_named_together(tmp_path: Path) -> None:
    """Issue 29: logistic-b0.1 and exponential-b0.1 both read 0.714 [0.630, 0.792], with no word why."""
    _responses(tmp_path, "r00-logistic-b0.1", ["a b", "c"])
    _responses(tmp_path, "r01-exponential-b0.1", ["a b", "c"])
    _responses(tmp_path, "r02-square-b0.1", ["a b", "d"])
    _responses(tmp_path, "r03-hinge-b0.1", ["a b", "c"])
    runs = ["r00-logistic-b0.1", "r01-exponential-b0.1", "r02-square-b0.1", "r03-hinge-b0.1"]
    twins = same_responses({run: read_responses(tmp_path / "runs" / run / "responses.jsonl") for run in runs})
    assert twins == {
        "r00-logistic-b0.1": ["r01-exponential-b0.1", "r03-hinge-b0.1"],
        "r01-exponential-b0.1": ["r00-logistic-b0.1", "r03-hinge-b0.1"],
        "r03-hinge-b0.1": ["r00-logistic-b0.1", "r01-exponential-b0.1"],
    }
