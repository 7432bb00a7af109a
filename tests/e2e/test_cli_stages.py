"""`gpo generate` and `gpo judge` as users run them."""

import json
import subprocess
import sys
from pathlib import Path

GPO = str(Path(sys.executable).parent / "gpo")


def gpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GPO, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_generate_then_judge_with_the_oracle(small_task, tmp_path: Path) -> None:
    model, prompts = small_task.artifacts.model_dir, small_task.artifacts.eval_prompts
    common = ["--n", "2", "--max-new-tokens", "8", "--backend", "transformers"]
    for name, seed in (("a", 1), ("b", 2)):
        result = gpo("generate", model, prompts, tmp_path / f"{name}.jsonl", *common, "--seed", seed)
        assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 48 and {"prompt_id", "prompt", "response", "sample", "model"} <= rows[0].keys()

    args = ["judge", tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--task", small_task.root, "--json"]
    first = gpo(*args, "--cache", tmp_path / "verdicts.jsonl")
    assert first.returncode == 0, first.stderr
    payload = json.loads(first.stdout)
    assert payload["compared"] == 96 and payload["invalid"] == 0 and payload["flip_rate"] == 0.0
    assert 0.0 <= payload["win_rate"]["low"] <= payload["win_rate"]["rate"] <= payload["win_rate"]["high"] <= 1.0
    again = json.loads(gpo(*args, "--cache", tmp_path / "verdicts.jsonl").stdout)
    assert again["judge_calls"] == 0 and again["win_rate"] == payload["win_rate"]


def test_judge_needs_exactly_one_judge(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("")
    result = gpo("judge", tmp_path / "a.jsonl", tmp_path / "a.jsonl")
    assert result.returncode == 2 and "choose exactly one judge" in result.stderr, result.stderr
    result = gpo("generate", tmp_path, tmp_path / "missing.jsonl", tmp_path / "out.jsonl")
    assert result.returncode == 2 and "not a transformers model folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_ordinary_mistakes_are_one_line_naming_what_is_wrong(small_task, tmp_path: Path) -> None:
    model, prompts = small_task.artifacts.model_dir, small_task.artifacts.eval_prompts
    made = gpo("generate", model, prompts, tmp_path / "a.jsonl", "--max-new-tokens", "2", "--backend", "transformers")
    assert made.returncode == 0, made.stderr
    cases = [
        (("judge", tmp_path / "a.jsonl", tmp_path / "a.jsonl", "--task", model), "not a built task (no manifest.json)"),
        (("judge", prompts, prompts, "--task", small_task.root), "eval_prompts.jsonl:1: not a response record"),
        (("judge", tmp_path / "a.jsonl", tmp_path / "a.jsonl", "--local", tmp_path), "is not a transformers model"),
        (("judge", tmp_path / "a.jsonl", tmp_path / "a.jsonl", "--local", model, "--template", "nope"),
         "--template: nope is neither summary, dialogue nor a file"),
        (("judge", tmp_path / "a.jsonl", tmp_path / "a.jsonl", "--local", model, "--labels", " A", " A"),
         "labels must be two different, non-blank texts"),
    ]  # fmt: skip
    for args, message in cases:
        result = gpo(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (args, result.stderr)
