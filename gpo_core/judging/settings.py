"""A judge's settings, as a job spec gives them (its ``judge:`` section) and as ``gpo judge`` builds
them from its options: one model, checked once, from which :func:`gpo_core.judging.factory.build_judge`
makes the judge. Torch-free: the control service validates specs with it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpo_core.inputs import path_field
from gpo_core.judging.endpoints import endpoint_url
from gpo_core.judging.templates import TEMPLATES, check_template


class JudgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["oracle", "endpoint", "chat", "local"] = Field(
        "oracle",
        description="oracle (built-in task), local (a causal LM folder), endpoint (an OpenAI-compatible "
        "completions API), chat (an OpenAI-compatible chat completions API: GPT-4-class services).",
    )
    mode: Literal["deterministic", "sampled"] = Field("deterministic", description="Oracle verdicts.")
    reward: Literal["gold", "labeler"] = Field(
        "gold",
        description="What the oracle judges by: the gold reward, or the built-in task's labeler's proxy (gold + "
        "task.label_length_bonus per word: the reward behind the dataset's labels), for an online annotator who "
        "errs as the labels do.",
    )
    base_url: str | None = Field(
        None, max_length=2048, description="OpenAI-compatible base URL, http(s) (kind=endpoint or chat)."
    )
    model: str | None = Field(None, max_length=200, description="Model name at the endpoint.")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        max_length=100,
        description="Embedded runs only (gpo run, on your own machine): the environment variable holding the "
        "endpoint's key (default OPENAI_API_KEY). The services refuse it: there the key is the operator's for "
        "the endpoint, or your stored secret (api_key_secret). Keys are never part of a spec.",
    )
    api_key_secret: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="Through the services: the name of your secret (PUT /secrets/NAME) holding the endpoint's key.",
    )
    model_dir: str | None = path_field("model", "Local causal LM folder (kind=local).")
    verdict: Literal["logprobs", "choice", "rationale", "json"] = Field(
        "logprobs",
        description="endpoint: logprobs or choice; chat: logprobs (answer-token probabilities), rationale "
        "(reasoning, then a verdict line) or json (response_format).",
    )
    template: str | None = Field(
        None,
        max_length=20_000,
        description="summary, dialogue, or a template with {prompt}, {first}, {second}; default: dialogue "
        "for conversational prompts, summary otherwise.",
    )
    labels: tuple[str, str] = Field(
        (" A", " B"), description="What the judge writes for the first and the second response."
    )
    retries: int = Field(2, ge=0, le=10, description="Further tries of a comparison whose answer was no verdict.")
    probe: int = Field(
        8,
        ge=0,
        le=64,
        description="Pairs of the dataset the judge compares in both orders before any training: a judge that "
        "decides none of them (its verdict follows the position, or it always ties) stops the job there. "
        "0: no probe (one verdict only).",
    )
    concurrency: int = Field(8, ge=1, le=64, description="Comparisons in flight at once (endpoint and chat judges).")
    price_per_million: tuple[float, float] | None = Field(
        None, description="Price of a million prompt and completion tokens: the job's judge cost is reported."
    )
    evaluate_on: str | None = path_field(
        "data",
        "Labelled pairs (chosen preferred) to measure this judge's own accuracy on; the report "
        "shows its agreement and position bias.",
    )

    @model_validator(mode="after")
    def _complete(self) -> JudgeSettings:
        if self.kind in ("endpoint", "chat") and not (self.base_url and self.model):
            raise ValueError(f"an {self.kind} judge needs base_url and model")
        if self.kind == "local" and not self.model_dir:
            raise ValueError("a local judge needs model_dir")
        modes = {"endpoint": ("logprobs", "choice"), "chat": ("logprobs", "rationale", "json")}.get(self.kind)
        if modes is not None and self.verdict not in modes:
            raise ValueError(f"a {self.kind} judge's verdict is one of {', '.join(modes)}, not {self.verdict}")
        if self.template is not None and self.template not in TEMPLATES:
            check_template(self.template)
        if not all(label.strip() for label in self.labels) or self.labels[0] == self.labels[1]:
            raise ValueError("labels must be two different, non-blank texts")
        if self.price_per_million is not None and min(self.price_per_million) < 0:
            raise ValueError("prices must be >= 0")
        return self

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else endpoint_url(value)

    @property
    def calls_endpoint(self) -> bool:
        """Does this judge call a URL (and so need the operator's allow-list)?"""
        return self.kind in ("endpoint", "chat")
