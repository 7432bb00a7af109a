"""A run's lifecycle, in one place: the stages every run goes through, the outcomes a stage ends
with, what comes next (:func:`next_step`), and the job folder's markers. The embedded runner
(``gpo run``) loops over it; the services' workers ask it what to enqueue after a task; the run
states the API shows are its vocabulary.

Every run goes ``train -> generate -> judge``. A stage ends ``done`` (the next stage follows; after
the last, the run has ``succeeded``) or ``diverged`` (training stopped on a non-finite loss: the run
is over with no model, and the job goes on without it). Once every run is over, the job's
finishing step (:data:`FINISH`: the judge's own accuracy, the pairwise comparisons, the report)
runs once. Each stage writes its marker last and atomically; a stage whose marker is there is done,
so running a job again, or redelivering a task, resumes where it stopped.

Adding an outcome means adding it to :data:`Outcome` and its run state to :data:`ENDS` (and, when
the state is new, to :data:`RunState`), then returning it from the stage that produces it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RunStage = Literal["train", "generate", "judge"]
STAGES: tuple[RunStage, ...] = ("train", "generate", "judge")
Outcome = Literal["done", "diverged"]
# The run states the API shows: waiting for a stage, in one, or over (the outcomes' ends, and the
# job's own ends: a failure, a cancel).
RunState = Literal["queued", "running", "succeeded", "diverged", "failed", "cancelled"]
# Where a run is: at one of its stages, or done with them all.
Position = Literal["train", "generate", "judge", "done"]
# What each outcome makes of the run when it ends it: an outcome that is not "done" ends the run at
# once, whatever the stage; "done" at the last stage ends it as succeeded.
ENDS: dict[Outcome, RunState] = {"done": "succeeded", "diverged": "diverged"}
DONE: frozenset[str] = frozenset(ENDS.values())  # the states of a run that is over and takes part in the report
FINISH = "report"  # the job's step once every run is over (one task per job)

REFERENCE = "reference"  # the reference policy's folder in a job: sampled like a run, never trained
MARKERS: dict[RunStage, str] = {"train": "train.json", "generate": "responses.jsonl", "judge": "judgement.json"}


@dataclass(frozen=True)
class Step:
    """Where a run goes after a stage: ``stage`` is the next stage, queued, or ``done`` with the
    run's final ``state``."""

    stage: Position
    state: RunState


def next_step(stage: RunStage, outcome: Outcome) -> Step:
    """What follows ``stage`` ending with ``outcome``."""
    position = STAGES.index(stage)
    if outcome == "done" and position + 1 < len(STAGES):
        return Step(STAGES[position + 1], "queued")
    return Step("done", ENDS[outcome])


def run_dir(job_dir: Path, run: str) -> Path:
    """A run's folder in a job (the reference's: ``JOB/reference``)."""
    return job_dir / "runs" / run if run != REFERENCE else job_dir / REFERENCE


def marker(job_dir: Path, run: str, stage: RunStage) -> Path:
    """The file whose presence means ``stage`` of ``run`` is done."""
    return run_dir(job_dir, run) / MARKERS[stage]
