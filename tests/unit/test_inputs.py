"""A run's inputs are declared once (gpo_core.inputs.RunInputs, and the marks on nested settings);
every list of path fields is derived from the marks."""

import pytest
from pydantic import ValidationError

from gpo_core.inputs import RunInputs, named_paths, path_field, path_fields
from gpo_core.sweep.spec import PATH_FIELDS, JobSpec, parse_job_spec
from gpo_core.train.launch import INPUTS
from gpo_core.train.spec import TrainingSpec


def test_the_path_lists_come_from_the_marks() -> None:
    inputs = ("policy", "reference", "dataset", "eval_pairs", "eval_prompts")
    assert path_fields(RunInputs) == inputs
    judges = ("judge.model_dir", "judge.evaluate_on", "online.annotator.model_dir", "online.annotator.evaluate_on")
    assert PATH_FIELDS == path_fields(JobSpec) == (*inputs, *judges)
    assert set(INPUTS) == {*inputs, "tokenizer"}
    assert path_fields(TrainingSpec, ("output",)) == ("output_dir", "cache_dir")
    assert path_fields(JobSpec, ("model",)) == ("policy", "reference", "judge.model_dir", "online.annotator.model_dir")


def test_an_optional_block_left_out_names_no_path() -> None:
    """The online block (and its annotator) is optional: its paths are None, not an error, and a
    local annotator's folder is found like the judge's, for every check that reads the marks."""
    base = {"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1]}
    assert named_paths(parse_job_spec(base))["online.annotator.model_dir"] is None
    annotator = {"kind": "local", "model_dir": "model:annotator"}
    spec = parse_job_spec({**base, "online": {"annotator": annotator}})
    assert named_paths(spec)["online.annotator.model_dir"] == "model:annotator"


def test_a_new_input_is_listed_wherever_inputs_are() -> None:
    class WithRewardModel(RunInputs):
        reward_model: str | None = path_field("model", "A reward model folder.")

    assert path_fields(WithRewardModel)[-1] == "reward_model"
    spec = WithRewardModel(policy="model:p", reward_model="model:r")
    assert named_paths(spec)["reward_model"] == "model:r"


def test_named_paths_reads_nested_settings() -> None:
    spec = parse_job_spec({"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1],
                           "judge": {"kind": "local", "model_dir": "/models/judge"}})  # fmt: skip
    assert named_paths(spec)["judge.model_dir"] == "/models/judge"
    assert named_paths(spec)["policy"] is None


def test_a_training_spec_requires_its_policy_and_dataset() -> None:
    with pytest.raises(ValidationError) as caught:
        TrainingSpec(output_dir="/tmp/x", beta=0.1)
    assert {error["loc"][0] for error in caught.value.errors()} == {"policy", "dataset"}
    assert TrainingSpec.model_fields["policy"].description == RunInputs.model_fields["policy"].description
