"""One definition of the training options: a single run's spec and a sweep's training block share
every field, type and limit; only the documented sweep defaults differ."""

import pytest

from gpo_core.sweep.spec import SWEEP_DEFAULTS, JobSpec, JobSpecError, TrainingSettings, parse_job_spec
from gpo_core.train.spec import TrainingOptions, TrainingSpec


def _without_default(schema: dict) -> dict:
    return {k: v for k, v in schema.items() if k != "default"}


def test_spec_and_sweep_share_every_option_with_the_same_limits() -> None:
    options = TrainingOptions.model_json_schema()["properties"]
    single = TrainingSpec.model_json_schema()["properties"]
    sweep = TrainingSettings.model_json_schema()["properties"]
    assert set(options) <= set(single) and set(options) <= set(sweep)
    assert set(sweep) - set(options) == {"beta_units"}
    for name, schema in options.items():
        assert _without_default(single[name]) == _without_default(schema), name
        assert _without_default(sweep[name]) == _without_default(schema), name


def test_only_the_documented_sweep_defaults_differ() -> None:
    single = {name: field.default for name, field in TrainingOptions.model_fields.items()}
    sweep = {name: field.default for name, field in TrainingSettings.model_fields.items() if name in single}
    assert {name for name in single if single[name] != sweep[name]} == set(SWEEP_DEFAULTS)
    assert TrainingSettings().model_dump(include=set(SWEEP_DEFAULTS)) == SWEEP_DEFAULTS


def test_a_sweep_can_set_what_it_could_not_before() -> None:
    spec = JobSpec(
        task={"size": "small"}, losses=["logistic"], betas=[0.1],
        training={"weight_decay": 0.01, "max_grad_norm": 0.5, "epochs": 2, "trace_max_new_tokens": 64},
    )  # fmt: skip
    assert spec.training.steps is None and spec.training.epochs == 2
    assert spec.training.weight_decay == 0.01 and spec.training.max_grad_norm == 0.5


@pytest.mark.parametrize(
    ("training", "field", "message"),
    [
        ({"lr": 2.0}, "training.lr", "less than or equal to 1"),
        ({"steps": 10, "epochs": 1}, "training", "exactly one of steps and epochs"),
        ({"truncation_side": "middle"}, "training.truncation_side", "'left' or 'right'"),
    ],
)
def test_the_same_rules_refuse_bad_sweep_options(training: dict, field: str, message: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        parse_job_spec({"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1], "training": training})
    assert field in str(caught.value) and message in str(caught.value)


def test_lora_target_modules_are_bounded_as_tenant_input() -> None:
    from pydantic import ValidationError

    from gpo_core.train.spec import LoraOptions

    assert LoraOptions(target_modules="all-linear").target_modules == "all-linear"
    assert LoraOptions(target_modules=["q_proj", "v_proj"]).target_modules == ["q_proj", "v_proj"]
    for bad in (["q_proj"] * 257, [""], ["x" * 201], []):
        with pytest.raises(ValidationError, match="target_modules"):
            LoraOptions(target_modules=bad)
