"""One definition of the training options: a single run's spec and a sweep's training block share
every field, type and limit; only the documented sweep defaults differ."""

import pytest

from gpo_core.notes import TRL_DEFAULTS, spec_notes
from gpo_core.sweep.spec import (
    BUILTIN_TASK_GENERATION,
    BUILTIN_TASK_TRAINING,
    SWEEP_DEFAULTS,
    JobSpec,
    JobSpecError,
    TrainingSettings,
    parse_job_spec,
)
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


OWN_DATA = {
    "policy": "m",
    "dataset": "d.jsonl",
    "eval_prompts": "p.jsonl",
    "judge": {"kind": "local", "model_dir": "j"},
}


def test_a_model_you_bring_trains_with_trls_settings_and_the_builtin_task_with_its_tuned_ones() -> None:
    own = parse_job_spec({**OWN_DATA, "losses": ["logistic"], "betas": [0.1]})
    for name in ("lr", "batch_size", "grad_accumulation", "warmup_steps", "weight_decay", "max_grad_norm"):
        assert getattr(own.training, name) == TRL_DEFAULTS[name][0], name
    assert own.training.max_prompt_length + own.training.max_response_length == 1024  # TRL's max_length
    assert own.generation.max_new_tokens == 256
    builtin = parse_job_spec({"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1]})
    assert builtin.training.model_dump(include=set(BUILTIN_TASK_TRAINING)) == BUILTIN_TASK_TRAINING
    assert builtin.generation.model_dump(include=set(BUILTIN_TASK_GENERATION)) == BUILTIN_TASK_GENERATION
    given = parse_job_spec({**builtin.model_dump(exclude={"training"}), "training": {"lr": 1e-6}})
    assert given.training.lr == 1e-6 and given.training.batch_size == 16  # what the spec gives wins
    assert parse_job_spec(builtin.model_dump()) == builtin  # a resolved spec travels unchanged


def test_every_default_unlike_trls_is_noted_once_with_both_values() -> None:
    own = parse_job_spec({**OWN_DATA, "losses": ["dpo", "hinge"], "betas": [0.1], "training": {"seed": 3}})
    alias, defaults = spec_notes(own)
    assert "'dpo' is the registry's 'logistic'" in alias
    assert "steps 200 (TRL: num_train_epochs 3)" in defaults
    assert "schedule constant (TRL: lr_scheduler_type linear)" in defaults
    assert "max_prompt_length 512 + max_response_length 512 (TRL: max_length 1024" in defaults
    assert "seed" not in defaults and "lr " not in defaults  # given, and TRL's value: nothing to say
    assert spec_notes(parse_job_spec({"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1]})) == []
    run = TrainingSpec(policy="m", dataset="d", output_dir="o", beta=0.1, steps=5, schedule="linear", seed=42)
    assert spec_notes(run) == [
        "defaults that differ from TRL's DPOConfig (give them in the spec to change): precision fp32 (TRL: bf16 on "
        "a GPU that has it); gradient_checkpointing false (TRL: gradient_checkpointing true); max_prompt_length "
        "512 + max_response_length 512 (TRL: max_length 1024 for prompt and response together, cut at the end)"
    ]


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
