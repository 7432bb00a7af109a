"""The example job specs (examples/) are valid specs, with the settings the docs say they have."""

from pathlib import Path

import pytest
import yaml

from gpo_core.sweep.spec import parse_job_spec

FOLDER = Path(__file__).resolve().parents[2] / "examples"
RUN_IN_PLACE = "smollm2-quiz.yaml"  # a `gpo run` spec with local paths, run by tests/e2e/test_real_model.py
EXAMPLES = sorted(p for p in FOLDER.glob("*.yaml") if p.name != RUN_IN_PLACE)


def test_there_are_examples() -> None:
    assert {path.name for path in EXAMPLES} >= {"own-data-local-judge.yaml", "own-data-chat-judge.yaml",
                                               "lora-sweep.yaml"}  # fmt: skip


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_example_is_a_valid_job_spec_sized_for_a_pretrained_model(path: Path) -> None:
    spec = parse_job_spec(yaml.safe_load(path.read_text()), path.name)
    assert spec.task is None and spec.policy == "model:my-model" and spec.dataset == "data:pairs.jsonl"
    assert spec.training.lr <= 1e-4 and spec.training.max_response_length >= 256  # not the toy task's 5e-4 and 16
    assert spec.generation.max_new_tokens >= 256


def test_the_real_model_example_names_files_beside_it() -> None:
    from gpo_core.sweep.spec import load_job_spec

    spec = load_job_spec(FOLDER / RUN_IN_PLACE)
    assert spec.policy == str(FOLDER / "smollm2") and Path(spec.dataset).is_file() and Path(spec.eval_prompts).is_file()
