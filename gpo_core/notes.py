"""What a spec means that its text does not say, one line each, printed once where a run or job
starts (``gpo train``, ``gpo run``, ``gpo submit``): the loss an alias stands for, and each default
that differs from what a TRL user would get from DPOConfig."""

from __future__ import annotations

from gpo_core.loss_names import alias_note
from gpo_core.sweep.spec import JobSpec
from gpo_core.train.spec import TrainingOptions, TrainingSpec

# TRL 1.16's DPOConfig, for the options whose defaults change a result (not logging or saving):
# our field -> (TRL's value in our terms, how TRL says it).
TRL_DEFAULTS: dict[str, tuple[object, str]] = {
    "lr": (1e-6, "learning_rate 1e-06"),
    "batch_size": (8, "per_device_train_batch_size 8"),
    "grad_accumulation": (1, "gradient_accumulation_steps 1"),
    "steps": (None, "num_train_epochs 3"),
    "schedule": ("linear", "lr_scheduler_type linear"),
    "warmup_steps": (0, "warmup_steps 0"),
    "weight_decay": (0.0, "weight_decay 0.0"),
    "max_grad_norm": (1.0, "max_grad_norm 1.0"),
    "seed": (42, "seed 42"),
    "precision": ("bf16", "bf16 on a GPU that has it"),
    "gradient_checkpointing": (True, "gradient_checkpointing true"),
    "max_response_length": (None, "max_length 1024 for prompt and response together, cut at the end"),
}


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def defaults_unlike_trl(options: TrainingOptions) -> str | None:
    """One line naming each option the spec left out whose value is not TRL's, with both values."""
    given = options.model_fields_set
    differences = []
    for name, (trl_value, trl_text) in TRL_DEFAULTS.items():
        value = getattr(options, name)
        if name in given or value == trl_value or value is None:
            continue
        if name == "max_response_length":
            shown = f"max_prompt_length {options.max_prompt_length} + max_response_length {value}"
        else:
            shown = f"{name} {_shown(value)}"
        differences.append(f"{shown} (TRL: {trl_text})")
    if not differences:
        return None
    return "defaults that differ from TRL's DPOConfig (give them in the spec to change): " + "; ".join(differences)


def spec_notes(spec: TrainingSpec | JobSpec) -> list[str]:
    """The notes for a run's or a job's spec, each once. The built-in task's tuned settings are
    no surprise to note; a model you bring gets the TRL comparison."""
    options: TrainingOptions | None
    if isinstance(spec, TrainingSpec):
        losses, options = [spec.loss], spec
    else:
        losses, options = [run.loss for run in spec.run_list()], (None if spec.task else spec.training)
    notes = [note for note in (alias_note(loss) for loss in losses) if note]
    if options is not None and (defaults := defaults_unlike_trl(options)):
        notes.append(defaults)
    return list(dict.fromkeys(notes))
