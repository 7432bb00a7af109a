"""Jobs and runs as the API shows them: the contract between the control service and the SDK
(both import these models, so the two cannot drift apart)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gpo_core.sweep.pipeline import Position, RunState

# A job whose runs are all over and whose report is written "succeeded", unless the report found
# that its win rates cannot decide anything (a judge that told nothing apart): then "inconclusive",
# with the reason. Either way the report is there to read.
JobState = Literal["queued", "running", "succeeded", "inconclusive", "failed", "cancelled"]
TERMINAL = frozenset({"succeeded", "inconclusive", "failed", "cancelled"})  # of a job
# A run's states and stages are its lifecycle's (gpo_core.sweep.pipeline): a run that "diverged"
# stopped training on a non-finite loss, and its job goes on without it (its report says so).


class RunView(BaseModel):
    id: str
    loss: str
    beta: float
    state: RunState
    stage: Position
    round: int | None = Field(None, description="The online round the stage belongs to; null for an offline run's.")
    step: int = 0
    steps: int = 0
    win_rate: dict | None = Field(None, description="Against the reference: rate, low, high, stderr, counts.")
    reason: str | None = None
    updated_at: float


class JobView(BaseModel):
    id: str
    name: str
    state: JobState
    reason: str | None = None
    created_at: float
    updated_at: float
    runs: list[RunView]
    report: str | None = Field(None, description="Path of the HTML report under this API, once written.")


class JobPage(BaseModel):
    jobs: list[JobView]
    next_offset: int | None = Field(None, description="Pass as offset for the next page; null on the last.")


class ErrorItem(BaseModel):
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    error: str = Field(description="A short machine-readable code: invalid_spec, not_found, unauthorized, ...")
    message: str
    details: list[ErrorItem] = Field(default_factory=list)
