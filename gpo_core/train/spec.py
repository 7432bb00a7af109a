"""The training spec: everything one GPO run needs, validated before any work starts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpo_core.errors import InputError
from gpo_core.inputs import RunInputs, named_paths, path_field, path_fields, required
from gpo_core.loss_names import LossSpecError, registry_name
from gpo_core.specfile import ADAPTER_CONFIG, format_errors, missing_paths, read_mapping, resolve_paths


def _usable_loss(value: str) -> str:
    """A registry name is checked without torch; a formula is parsed and checked (torch and sympy
    are loaded then, and only then: a spec's other errors come at once)."""
    if registry_name(value) is not None:
        return value
    from gpo_core.losses import resolve_loss

    try:
        resolve_loss(value)
    except LossSpecError as err:
        raise ValueError(str(err)) from None
    return value


def beta_from_ipo_equivalent(beta_ipo: float, loss: str) -> float:
    """:func:`gpo_core.analysis.beta_from_ipo_equivalent`, loaded when a spec gives IPO units."""
    from gpo_core.analysis import beta_from_ipo_equivalent as convert

    return convert(beta_ipo, loss)


def _finite_positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a finite number > 0, got {value}")
    return value


# Field types shared with the sweep's job spec: one rule, one message, wherever a loss or beta is given.
Loss = Annotated[str, Field(max_length=500), AfterValidator(_usable_loss)]
Beta = Annotated[float, AfterValidator(_finite_positive)]


class LoraOptions(BaseModel):
    """Train low-rank adapters instead of every weight (peft's LoRA)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, le=4096, description="Rank of each adapter.")
    alpha: float = Field(32.0, gt=0, description="Scale: the update is (alpha / r) B A.")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[Annotated[str, Field(min_length=1, max_length=200)]] | Literal["all-linear"] = Field(
        "all-linear",
        min_length=1,
        max_length=256,
        description="Module names to adapt (e.g. [q_proj, v_proj]); all-linear: every linear layer "
        "but the output head.",
    )


class TrainingOptions(BaseModel):
    """How a run trains: every option that ``gpo train``'s spec and a sweep's ``training`` block
    share, defined once. Defaults are TRL's DPOConfig's where TRL has the option (learning rate,
    batch, lengths): a model you bring trains as it would there. A sweep changes a few
    (:data:`gpo_core.sweep.spec.SWEEP_DEFAULTS`), and the built-in task has its own tuned ones."""

    model_config = ConfigDict(extra="forbid")

    optimizer: Literal["adamw", "adafactor"] = "adamw"
    lr: float = Field(1e-6, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    grad_accumulation: int = Field(1, ge=1, le=1024)
    steps: int | None = Field(None, ge=1, le=10_000_000, description="Optimizer steps (or give epochs).")
    epochs: float | None = Field(None, gt=0, le=10_000, description="Passes over the pairs (or give steps).")
    max_grad_norm: float | None = Field(1.0, gt=0)

    max_prompt_length: int = Field(512, ge=1, le=131_072)
    max_response_length: int = Field(
        512, ge=1, le=131_072, description="With max_prompt_length 512: TRL's max_length 1024 in all."
    )
    truncation_side: Literal["left", "right"] = Field("left", description="Which end of a long prompt is cut.")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    precision: Literal["fp32", "bf16", "bf16-pure"] = Field(
        "fp32",
        description="fp32; bf16: mixed (fp32 weights, bf16 autocast); bf16-pure: bf16 weights, gradients and "
        "optimizer state (half the bytes per parameter).",
    )
    logprob_chunk: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Response positions whose logits exist at once (recomputed in backward); default all. "
        "Bounds memory with a large vocabulary.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass: less memory, ~30% more compute."
    )
    disable_dropout: bool = Field(
        True,
        description="Train the policy without its dropout (TRL's default too): the reference's log-probs have none, "
        "so with it rho starts away from 0 and carries noise. LoRA's own dropout (lora.dropout) is kept.",
    )

    workers: int = Field(0, ge=0, le=1024, description="Ray Train workers; 0 runs in this process without Ray.")
    use_gpu: bool = False
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Ray workers each hold a whole replica (ddp) or a 1/N shard of weights, gradients and "
        "optimizer state (fsdp: FSDP2).",
    )
    lora: LoraOptions | None = Field(
        None, description="Train LoRA adapters (r, alpha, dropout, target_modules); default: every weight."
    )
    placement: Literal["pack", "spread"] = Field(
        "pack", description="Ray workers packed onto few nodes (less traffic) or spread one per node."
    )

    checkpoint_every: int = Field(
        0, ge=0, le=10_000_000, description="Steps between checkpoints; 0: only the final model."
    )
    trace_every: int = Field(
        0, ge=0, le=10_000_000, description="Steps between KL / square-loss traces (Fig. 5); 0: none."
    )
    trace_prompts: int = Field(64, ge=1, le=100_000, description="Evaluation prompts sampled for the KL trace.")
    trace_max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=131_072,
        description="Tokens sampled per KL-trace response; default max_response_length (fewer: KL of prefixes).",
    )
    log_every: int = Field(1, ge=1, le=10_000_000)
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers the metrics also go to (the tracking extra)."
    )

    @model_validator(mode="after")
    def _one_length(self) -> TrainingOptions:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        if self.strategy == "fsdp" and self.lora is not None:
            raise ValueError(
                "lora with strategy: fsdp is not built yet: use strategy: ddp (each worker then holds "
                "the frozen base model whole)"
            )
        if self.strategy == "fsdp" and self.workers < 1:
            raise ValueError("strategy: fsdp shards over Ray workers: give workers >= 1 (0 trains in this process)")
        return self


class TrainingSpec(TrainingOptions, RunInputs):
    """One GPO fine-tuning run: the models and data (:class:`RunInputs`), the loss and beta, the
    output folder, and the training options. Paths are model folders (transformers) and datasets in
    the common format (JSONL, Parquet or a saved ``datasets`` folder)."""

    # One run has no built-in task to take them from: its policy and dataset are required.
    policy: str = required(RunInputs, "policy")
    dataset: str = required(RunInputs, "dataset")
    tokenizer: str | None = path_field("model", "Tokenizer folder; default: the policy folder.")
    output_dir: str = path_field("output", "Run folder: checkpoints, metrics.jsonl, final model.", default=...)

    loss: Loss = Field("logistic", description="Registry name (logistic, hinge, square, ...) or a formula in x.")
    beta: Beta | None = Field(None, description="beta in the loss's own units.")
    beta_ipo: Beta | None = Field(None, description="beta in IPO-equivalent units, converted per loss.")
    cache_dir: str | None = path_field("output", "Reference log-prob cache; default $GPO_CACHE_DIR or ~/.cache/gpo.")
    trace_at_start: bool = Field(
        True,
        description="Trace before the first step too (an online round after the first leaves it out: "
        "the previous round's last trace was of the same model).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        if (self.beta is None) == (self.beta_ipo is None):
            raise ValueError("give exactly one of beta (the loss's units) and beta_ipo (IPO-equivalent units)")
        if self.beta_ipo is not None:
            try:
                beta_from_ipo_equivalent(self.beta_ipo, self.loss)
            except LossSpecError as err:
                raise ValueError(str(err)) from None
        if self.lora is not None and (Path(self.policy) / ADAPTER_CONFIG).is_file():
            raise ValueError(
                "policy is a LoRA adapter folder: its adapters are trained further with their own r, alpha and "
                "targets; leave lora out (lora adds new adapters to a full model)"
            )
        if self.trace_every and not (self.eval_pairs or self.eval_prompts):
            raise ValueError("trace_every needs eval_pairs and/or eval_prompts to trace on")
        return self

    @property
    def effective_beta(self) -> float:
        """beta in the loss's own units (converted from beta_ipo when that was given)."""
        if self.beta is not None:
            return self.beta
        assert self.beta_ipo is not None  # the spec gives exactly one of them
        return beta_from_ipo_equivalent(self.beta_ipo, self.loss)

    @property
    def reference_path(self) -> str:
        return self.reference or self.policy

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.policy


class SpecError(InputError):
    """A spec file that cannot be used; the message names the file and each bad field."""


PATH_FIELDS = path_fields(TrainingSpec, ("model", "data", "output"))  # taken relative to the spec file


def load_spec(path: str | Path, **overrides) -> TrainingSpec:
    """Read a YAML or JSON spec file; ``overrides`` replace fields. Paths in it expand ``~`` and
    are taken relative to the file's folder; the inputs it names must exist."""
    data = read_mapping(path, SpecError)
    sweep = sorted({"losses", "betas", "runs", "task"} & set(data))
    if sweep:  # its 11 errors would list the training spec's fields five times
        raise SpecError(
            f"{path}: a job spec (it has {', '.join(sweep)}), not a training spec: gpo run and gpo "
            "submit take a job spec; gpo train and gpo plan take one run's (docs/training.md)"
        )
    data = resolve_paths(data, PATH_FIELDS, Path(path).resolve().parent)
    try:
        spec = TrainingSpec(**{**data, **overrides})
    except ValidationError as err:
        raise SpecError(format_errors(err, str(path), "training spec", TrainingSpec)) from None
    problems = missing_paths(named_paths(spec), path_fields(TrainingSpec, ("model",)))
    if problems:
        relative = " (relative paths are taken from the spec file's folder)"
        raise SpecError(f"{path}: " + "; ".join(problems) + relative)
    return spec
