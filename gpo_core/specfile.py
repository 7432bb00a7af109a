"""Reading spec files (YAML or JSON) and reporting pydantic's errors by field, the same way for
every kind of spec."""

from __future__ import annotations

import difflib
import json
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

# Names a TRL user types (DPOConfig, TrainingArguments, the script's arguments) and ours (the
# first of several that the spec has).
TRL_NAMES: dict[str, str | tuple[str, ...]] = {
    "learning_rate": "lr",
    "loss_type": ("loss", "losses"),
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accumulation",
    "max_steps": "steps",
    "num_train_epochs": "epochs",
    "max_completion_length": "max_response_length",
    "max_target_length": "max_response_length",
    "lr_scheduler_type": "schedule",
    "optim": "optimizer",
    "bf16": "precision",
    "logging_steps": "log_every",
    "save_steps": "checkpoint_every",
    "max_grad_norm": "max_grad_norm",
    "model_name_or_path": "policy",
    "model": "policy",
    "ref_model": "reference",
    "train_dataset": "dataset",
    "dataset_name": "dataset",
    "eval_dataset": "eval_pairs",
}


# TRL options that have no field of their own here, and what to do instead.
TRL_EXPLAINED: dict[str, str] = {
    "max_length": "TRL's 'max_length' (prompt and response together) is two limits here: max_prompt_length and "
    "max_response_length",
    "precompute_ref_log_probs": "reference log-probs are always computed once and cached here (for the pairs a run "
    "sees); leave it out",
    "label_smoothing": "TRL's label smoothing (conservative DPO) is a loss formula here: for eps = 0.1, loss: "
    "'0.9*log(1+exp(-x)) + 0.1*log(1+exp(x))'",
    "use_peft": "give lora: {r: 16} for LoRA adapters",
    "peft_config": "give lora: {r: 16, alpha: 32, target_modules: [...]} for LoRA adapters",
    "reference_free": "GPO always has a reference policy (pi_ref); leave it out",
}


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The pydantic model inside a field's type (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field's dotted name, nested models included."""
    names = []
    for name, info in model.model_fields.items():
        names.append(prefix + name)
        if (inner := _model_in(info.annotation)) is not None:
            names += _fields(inner, f"{prefix}{name}.")
    return names


def _model_at(model: type[BaseModel], location: list[str]) -> type[BaseModel]:
    for part in location:
        info = model.model_fields.get(part)
        inner = _model_in(info.annotation) if info is not None else None
        if inner is None:
            break  # a list index, or a field that is not a model
        model = inner
    return model


def unknown_field_hint(model: type[BaseModel], location: list) -> str:
    """For a field the spec does not have: TRL's name mapped to ours, or the closest field."""
    parents = [str(p) for p in location[:-1] if not isinstance(p, int)]
    name = str(location[-1])
    here = list(_model_at(model, parents).model_fields)
    prefix = ".".join(parents) + "." if parents else ""
    if name in TRL_EXPLAINED:
        return f"unknown field; {TRL_EXPLAINED[name]}"
    wanted = TRL_NAMES.get(name, ())
    for ours in (wanted,) if isinstance(wanted, str) else wanted:
        if ours in here:
            return f"unknown field; TRL's '{name}' is '{prefix}{ours}' here"
    for ours in (wanted,) if isinstance(wanted, str) else wanted:
        elsewhere = [f for f in _fields(model) if f.split(".")[-1] == ours]
        if elsewhere:
            return f"unknown field; TRL's '{name}' is '{elsewhere[0]}' here"
    close = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean '{prefix}{close[0]}'?"
    return f"unknown field (fields here: {', '.join(here)})"


def problem_message(problem: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """pydantic's message for one error, with a hint for an unknown field when ``model`` is given."""
    if model is not None and problem.get("type") == "extra_forbidden" and problem.get("loc"):
        return unknown_field_hint(model, list(problem["loc"]))
    if problem.get("type") == "list_type":  # `betas: 0.1` where a list is meant
        value = problem.get("input")
        shown = json.dumps(value) if isinstance(value, str | int | float | bool) else None
        return f"a list is expected here: [{shown}]" if shown else "a list is expected here, e.g. [a, b]"
    return str(problem.get("msg", "invalid")).removeprefix("Value error, ")


def describe_errors(err: ValidationError, model: type[BaseModel] | None = None) -> list[dict]:
    """pydantic's errors as ``{"field": "a.b.0", "message": ...}``."""
    return [
        {
            "field": ".".join(str(part) for part in problem["loc"]) or "(spec)",
            "message": problem_message(problem, model),
        }
        for problem in err.errors()
    ]


def format_errors(err: ValidationError, source: str, what: str, model: type[BaseModel] | None = None) -> str:
    problems = describe_errors(err, model)
    lines = [f"{source}: invalid {what}"] + [f"  {e['field']}: {e['message']}" for e in problems]
    return "\n".join(lines)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # model:NAME, data:NAME, s3://...


def resolve_paths(data: dict, fields: tuple[str, ...], base: Path) -> dict:
    """``data`` with the paths in ``fields`` (dotted names) made absolute: ``~`` expanded, and a
    relative path taken against ``base`` (the spec file's folder, so a spec means the same files
    wherever it is run from). Names with a scheme (``model:``, ``data:``, ``s3://``) are kept."""
    data = dict(data)
    for name in fields:
        head, _, rest = name.partition(".")
        if rest:
            if isinstance(data.get(head), dict):
                data[head] = resolve_paths(data[head], (rest,), base)
            continue
        value = data.get(head)
        if isinstance(value, str) and value and not _SCHEME.match(value):
            path = Path(value).expanduser()
            data[head] = str(path if path.is_absolute() else (base / path).resolve())
    return data


ADAPTER_CONFIG = "adapter_config.json"  # a peft adapter folder's mark: a model folder too


def not_a_model_folder(path: str | Path) -> str:
    """Why ``path`` is no transformers model folder, and for a GGUF file (llama.cpp's format, what
    many small instruct models ship as) how to make it one: transformers reads GGUF only to
    convert it, with the ``gguf`` package."""
    path = Path(path)
    ggufs = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not ggufs:
        return f"{path} is not a transformers model folder (it has no config.json)"
    return (
        f"{ggufs[0]} is a GGUF file, not a transformers model folder: convert it once with "
        f"gpo model from-gguf {ggufs[0]} DIR, and give DIR"
    )


def missing_paths(named: dict[str, str | None], models: tuple[str, ...] = ()) -> list[str]:
    """One line per input that is not there (or, for the names in ``models``, is not a
    transformers model folder): what a run checks before it loads anything."""
    problems = []
    for name, value in named.items():
        if value is None or _SCHEME.match(value):
            continue
        path = Path(value)
        if not path.exists():
            problems.append(f"{name}: {path}: no such file or folder")
        elif name in models and not any((path / marker).is_file() for marker in ("config.json", ADAPTER_CONFIG)):
            problems.append(f"{name}: {not_a_model_folder(path)}")
    return problems


def read_mapping(path: str | Path, error: type[Exception]) -> dict:
    """The mapping in a YAML or JSON file (JSON is YAML); ``error`` says what is wrong and where."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a spec is a mapping of fields, found {type(data).__name__}")
    return data
