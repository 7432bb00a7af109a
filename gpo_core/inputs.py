"""A run's inputs, declared once. :class:`RunInputs` holds the models and data a run reads; the
job spec and the training spec both derive from it, and every list of path fields (which to take
relative to a spec file, which must exist, which name a model folder, which a tenant's upload may
fill, which make a run's identity) is read from the fields' marks here, never written out again.

A field is marked with the kind of path it holds: ``model`` (a transformers folder), ``data`` (a
dataset or prompts file) or ``output`` (a folder the run writes). Nested settings (the judge's
``model_dir``) are marked the same way and found by their dotted names."""

from __future__ import annotations

import copy
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

PathKind = Literal["model", "data", "output"]
INPUT_KINDS: tuple[PathKind, ...] = ("model", "data")
MAX_PATH = 4096


def path_field(kind: PathKind, description: str, default: Any = None) -> Any:
    """A field holding a path of ``kind``: a local path, an upload name (``data:NAME``,
    ``model:NAME``) or an object-store URI."""
    return Field(default, max_length=MAX_PATH, description=description, json_schema_extra={"path": kind})


def required(model: type[BaseModel], name: str) -> Any:
    """``model``'s field ``name`` as it is declared there, but required: for a spec that cannot do
    without an input another spec may take from elsewhere (a job's built-in task)."""
    info = copy.copy(model.model_fields[name])
    info.default = PydanticUndefined
    return info


def _kind(info: FieldInfo) -> str | None:
    extra = info.json_schema_extra
    return extra.get("path") if isinstance(extra, dict) else None  # type: ignore[return-value]


def _nested(info: FieldInfo) -> type[BaseModel] | None:
    """The settings model a field holds, optional or not (``JudgeSettings | None``)."""
    annotation = info.annotation
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def path_fields(model: type[BaseModel], kinds: tuple[PathKind, ...] = INPUT_KINDS) -> tuple[str, ...]:
    """The dotted names of ``model``'s fields (nested settings included) that hold paths of
    ``kinds``, in declaration order."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        if _kind(info) in kinds:
            names.append(name)
        elif (inner := _nested(info)) is not None:
            names += [f"{name}.{field}" for field in path_fields(inner, kinds)]
    return tuple(names)


def named_paths(spec: BaseModel, kinds: tuple[PathKind, ...] = INPUT_KINDS) -> dict[str, str | None]:
    """``spec``'s paths of ``kinds`` by dotted field name."""
    found: dict[str, str | None] = {}
    for name in path_fields(type(spec), kinds):
        value: Any = spec
        for part in name.split("."):
            value = getattr(value, part) if value is not None else None  # an optional block left out
        found[name] = value
    return found


class RunInputs(BaseModel):
    """The models and data a run reads, and how its data is read."""

    policy: str | None = path_field("model", "Model folder to fine-tune (transformers, causal or encoder-decoder).")
    reference: str | None = path_field("model", "Reference model folder; default: the policy's starting weights.")
    dataset: str | None = path_field("data", "Training pairs {prompt, chosen, rejected}: texts or lists of messages.")
    dataset_split: str = Field("train", max_length=100, description="Split of a saved DatasetDict folder.")
    dataset_columns: dict[str, str] = Field(
        default_factory=dict, max_length=3, description="Our field -> the data's column, e.g. {prompt: question}."
    )
    chat_template: str | None = Field(
        None, max_length=50_000, description="Jinja chat template for conversations; default: the tokenizer's."
    )
    eval_pairs: str | None = path_field("data", "Held-out pairs for the mu-weighted square loss trace.")
    eval_prompts: str | None = path_field(
        "data", "Prompts: the KL trace's samples, and the evaluation's (a job samples and judges them)."
    )
