"""The training spec refuses bad input by field; `gpo train` runs a spec file end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gpo_core.train.spec import SpecError, TrainingSpec, load_spec

BASE = {"policy": "m", "dataset": "d.jsonl", "output_dir": "out", "beta": 0.1, "steps": 10}


def test_effective_beta_from_ipo_units() -> None:
    assert TrainingSpec(**{**BASE, "beta": None, "beta_ipo": 0.1, "loss": "logistic"}).effective_beta == pytest.approx(
        0.2
    )
    assert TrainingSpec(**BASE).effective_beta == 0.1
    assert TrainingSpec(**BASE).reference_path == "m"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"loss": "kto"}, "loss", "unknown loss 'kto'"),
        ({"loss": "__import__('os')"}, "loss", "unknown function '__import__'"),
        ({"beta": -1.0}, "beta", "finite number > 0"),
        ({"beta": float("nan")}, "beta", "finite number > 0"),
        ({"beta": None}, "(spec)", "exactly one of beta"),
        ({"beta": None, "beta_ipo": 0.1, "loss": "hinge"}, "(spec)", "no IPO-equivalent beta"),
        ({"steps": None}, "(spec)", "exactly one of steps and epochs"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"max_prompt_length": 10**9}, "max_prompt_length", "less than or equal to"),
        ({"optimizer": "sgd"}, "optimizer", "'adamw' or 'adafactor'"),
        ({"trace_every": 5}, "(spec)", "trace_every needs eval_pairs"),
        ({"learning_rate": 1.0}, "learning_rate", "TRL's 'learning_rate' is 'lr' here"),
        ({"loss_type": "sigmoid"}, "loss_type", "TRL's 'loss_type' is 'loss' here"),
        ({"max_length": 1024}, "max_length", "two limits here: max_prompt_length and max_response_length"),
        ({"label_smoothing": 0.1}, "label_smoothing", "loss: '0.9*log(1+exp(-x)) + 0.1*log(1+exp(x))'"),
        ({"precompute_ref_log_probs": True}, "precompute_ref_log_probs", "always computed once and cached"),
    ],
)
def test_bad_specs_name_the_field(tmp_path: Path, change: dict, field: str, message: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in {**BASE, **change}.items() if v is not None}))
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    text = str(raised.value)
    assert f"{field}: " in text and message in text, text


def test_spec_file_problems(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="a spec is a mapping"):
        load_spec(tmp_path / "list.yaml")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"task": {"size": "small"}, "losses": ["dpo"], "betas": [0.1]}))
    with pytest.raises(SpecError) as job_spec:  # gpo plan job.yaml printed 11 errors and 43 fields five times
        load_spec(tmp_path / "job.yaml")
    assert "a job spec (it has betas, losses, task), not a training spec" in str(job_spec.value)
    assert str(job_spec.value).count("\n") == 0
    (tmp_path / "broken.yaml").write_text("policy: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "broken.yaml")
    with pytest.raises(ValidationError):
        TrainingSpec(**{**BASE, "workers": -1})


def test_paths_are_taken_from_the_spec_files_folder_and_expand_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models" / "m").mkdir(parents=True)
    (tmp_path / "home" / "models" / "m" / "config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text("")
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "smollm2-135m-instruct-q8_0.gguf").write_bytes(b"GGUF")
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "spec.yaml"
    fields = {**BASE, "policy": "~/models/m", "dataset": "../data/pairs.jsonl", "output_dir": "runs/a"}
    path.write_text(yaml.safe_dump(fields))
    spec = load_spec(path)
    assert spec.policy == str(tmp_path / "home" / "models" / "m")
    assert spec.dataset == str(tmp_path / "data" / "pairs.jsonl")
    assert spec.output_dir == str(tmp_path / "specs" / "runs" / "a")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "nope.jsonl"}, "dataset: {root}/specs/nope.jsonl: no such file or folder"),
        ({"policy": "../data"}, "policy: {root}/data is not a transformers model folder (it has no config.json)"),
        ({"tokenizer": "~/tok"}, "tokenizer: {root}/home/tok: no such file or folder"),
        (  # issue 29: small instruct models often ship as GGUF; say how to convert one
            {"policy": "../gguf"},
            "policy: {root}/gguf/smollm2-135m-instruct-q8_0.gguf is a GGUF file, not a transformers model folder: "
            "convert it once with gpo model from-gguf",
        ),
    ],
)
def test_missing_inputs_are_one_line_naming_field_and_path(tmp_path: Path, monkeypatch, change, message) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text("")
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "smollm2-135m-instruct-q8_0.gguf").write_bytes(b"GGUF")
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "policy": "../m", "dataset": "../data/pairs.jsonl", **change}))
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    text = str(raised.value)
    assert "\n" not in text and message.format(root=tmp_path) in text and "spec file's folder" in text


def gpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "gpo"), *args], capture_output=True, text=True, timeout=600
    )


def test_gpo_train_runs_a_spec_file(small_task, tmp_path: Path) -> None:
    spec = {
        "policy": small_task.artifacts.model_dir,
        "dataset": small_task.artifacts.train_pairs,
        "eval_pairs": small_task.artifacts.eval_pairs,
        "output_dir": str(tmp_path / "run"),
        "loss": "exp(-x) + 0.1*x^2",
        "beta_ipo": 0.1,
        "lr": 1e-3,
        "steps": 3,
        "trace_every": 3,
        "cache_dir": str(tmp_path / "cache"),
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = gpo("train", str(tmp_path / "spec.yaml"))
    assert result.returncode == 0, result.stderr
    assert "finished after 3 steps" in result.stdout
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("step") == 3 and "trace" in kinds and kinds[-1] == "end"
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_gpo_train_reports_bad_spec_and_bad_data_without_traceback(small_task, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**BASE, "loss": "x**2"}))
    result = gpo("train", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2 and "loss: formula 'x**2' has f'(0) = 0" in result.stderr
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a"}\n')
    spec = {**BASE, "policy": small_task.artifacts.model_dir, "dataset": str(tmp_path / "pairs.jsonl")}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({**spec, "output_dir": str(tmp_path / "o")}))
    result = gpo("train", str(tmp_path / "data.yaml"))
    assert result.returncode == 2 and "pairs.jsonl:1: field 'rejected' is missing" in result.stderr
    assert "Traceback" not in result.stderr
