"""A run's lifecycle, in one place: the stages every run goes through, the outcomes a stage ends
with, what comes next (:func:`next_step`), and the job folder's markers. The embedded runner
(``gpo run``) loops over it; the services' workers ask it what to enqueue after a task; the run
states the API shows are its vocabulary.

An offline run goes ``train -> generate -> judge``. An online run (``JobSpec.online``) starts at
the trainer too (every job's folder starts there: the built-in task, the preflight), with no pairs
to train on yet, then goes through its rounds, each on the same three services in another order:
``generate`` (two responses per prompt from the current policy), ``judge`` (the annotator labels
them) and ``train`` (GPO steps on the fresh pairs); after the last round it goes on as an offline
run does after training: sampled on the evaluation prompts, then judged against the reference. A
stage ends ``done`` (the next stage follows; after the last, the run has ``succeeded``) or
``diverged`` (training stopped on a non-finite loss: the run is over with no model, and the job
goes on without it). Once every run is over, the job's finishing step (:data:`FINISH`: the judge's
own accuracy, the pairwise comparisons, the report) runs once. Each stage writes its marker last
and atomically; a stage whose marker is there is done, so running a job again, or redelivering a
task, resumes where it stopped.

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
# An online round's stages, in order, and the file each writes last (in JOB/runs/RUN/rounds/R/).
ROUND_STAGES: tuple[RunStage, ...] = ("generate", "judge", "train")
ROUND_MARKERS: dict[RunStage, str] = {"generate": "samples.jsonl", "judge": "labels.json", "train": "train.json"}


@dataclass(frozen=True)
class Step:
    """Where a run goes after a stage: ``stage`` is the next stage, queued (of online round
    ``round``, or of the run's own lifecycle when None), or ``done`` with the run's final ``state``."""

    stage: Position
    state: RunState
    round: int | None = None


def next_step(stage: RunStage, outcome: Outcome, round: int | None = None, rounds: int = 0) -> Step:
    """What follows ``stage`` (of online round ``round`` of ``rounds``, or of the run's own
    lifecycle when None) ending with ``outcome``."""
    if outcome != "done":
        return Step("done", ENDS[outcome])
    if round is not None:
        position = ROUND_STAGES.index(stage)
        if position + 1 < len(ROUND_STAGES):
            return Step(ROUND_STAGES[position + 1], "queued", round)
        if round + 1 < rounds:
            return Step(ROUND_STAGES[0], "queued", round + 1)
        return Step(STAGES[STAGES.index("train") + 1], "queued")  # trained: on as an offline run
    if stage == STAGES[0] and rounds:  # an online run's start: its first round follows
        return Step(ROUND_STAGES[0], "queued", 0)
    position = STAGES.index(stage)
    if position + 1 < len(STAGES):
        return Step(STAGES[position + 1], "queued")
    return Step("done", ENDS[outcome])


def run_dir(job_dir: Path, run: str) -> Path:
    """A run's folder in a job (the reference's: ``JOB/reference``)."""
    return job_dir / "runs" / run if run != REFERENCE else job_dir / REFERENCE


def round_dir(job_dir: Path, run: str, round: int) -> Path:
    """An online run's folder for one round: its samples, labelled pairs and training."""
    return run_dir(job_dir, run) / "rounds" / f"{round:03d}"


def marker(job_dir: Path, run: str, stage: RunStage, round: int | None = None) -> Path:
    """The file whose presence means ``stage`` of ``run`` (of its online ``round``) is done."""
    if round is not None:
        return round_dir(job_dir, run, round) / ROUND_MARKERS[stage]
    return run_dir(job_dir, run) / MARKERS[stage]
