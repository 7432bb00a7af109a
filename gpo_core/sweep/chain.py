"""One run of a sweep taken through its stages in this process, from wherever it stands to done.

The embedded runner (:mod:`gpo_core.sweep.runner`) calls it for each run in turn, or hands runs to
worker processes (:mod:`gpo_core.sweep.parallel`) that call it there; either way a run's stages, its
events and its stop are the same. Stages skip work already on disk, so a chain that was stopped
resumes where it stood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpo_core.generate import VLLMEngine
from gpo_core.sweep import online, stages
from gpo_core.sweep.pipeline import STAGES, Outcome, RunStage, Step, next_step
from gpo_core.sweep.spec import JobSpec

Events = Callable[[dict], None]
StopCheck = Callable[[], bool]


class RunSink:
    """Training records of one run, tagged with the run id, to the caller's event callback."""

    def __init__(self, run: str, events: Events):
        self.run, self.events = run, events

    def emit(self, record: dict) -> None:
        self.events({**record, "run": self.run})

    def close(self) -> None:
        pass


def stage_event(emit: Events, run: str, name: str, state: str, **extra) -> None:
    """A stage of ``run`` began or ended (``state``), with what its end tells."""
    emit({"kind": "stage", "run": run, "stage": name, "state": state, **extra})


class Stopped(Exception):
    """A stop was asked for during training: the sweep ends here, resumable."""


@dataclass
class RunChain:
    """What every run's stages need: the sweep, its folder and cache, the generation engine (None:
    transformers) and the judges' API keys. Everything but the engine crosses to a worker process;
    a worker starts its own engine."""

    spec: JobSpec
    job_dir: Path
    cache: Path
    engine: VLLMEngine | None
    backend: str
    api_key: str | None
    api_keys: dict[str, str | None]

    def run_to_end(self, run: str, emit: Events, stop_requested: StopCheck) -> bool:
        """Take ``run`` through its stages (an online run's rounds first); False when a stop was
        asked for during training (the run is not over), True once it is."""
        rounds = self.spec.rounds(self.spec.run(run))
        step = Step(STAGES[0], "queued")
        try:
            while step.stage != "done":
                position, round = step.stage, step.round
                where = {} if round is None else {"round": round}
                stage_event(emit, run, position, "running", **where)
                if round is None:
                    outcome, told = self._run_stage(position, run, emit, stop_requested)
                else:
                    outcome, told = self._round_stage(position, run, round, emit, stop_requested)
                stage_event(emit, run, position, outcome, **where, **told)
                step = next_step(position, outcome, round, rounds)
        except Stopped:
            return False
        return True

    def _run_stage(self, name: RunStage, run: str, emit: Events, stop_requested: StopCheck) -> tuple[Outcome, dict]:
        """One stage of ``run``: its outcome, and what its event tells."""
        spec, job_dir = self.spec, self.job_dir
        if name == "train":
            result = stages.train_stage(spec, job_dir, run, RunSink(run, emit), stop_requested)
            if result["stopped"]:
                stage_event(emit, run, "train", "stopped", step=result["steps"])
                raise Stopped
            return stages.training_outcome(result)
        if name == "generate":
            stages.generate_stage(spec, job_dir, run, self.cache, self.engine, backend=self.backend)
            return "done", {}
        summary = stages.judge_stage(spec, job_dir, run, api_key=self.api_key)
        return "done", {"win_rate": summary.get("win_rate")}

    def _round_stage(
        self, name: RunStage, run: str, round: int, emit: Events, stop_requested: StopCheck
    ) -> tuple[Outcome, dict]:
        """One stage of an online round of ``run``: its outcome, and what its event tells."""
        spec, job_dir = self.spec, self.job_dir
        if name == "generate":
            online.sample_round(spec, job_dir, run, round, self.engine, backend=self.backend)
            return "done", {}
        if name == "judge":
            labels = online.label_round(spec, job_dir, run, round, api_keys=self.api_keys)
            return "done", {"pairs": labels["pairs"]}
        result = online.train_round(spec, job_dir, run, round, RunSink(run, emit), stop_requested)
        if result["stopped"]:
            stage_event(emit, run, "train", "stopped", round=round, step=result["steps"])
            raise Stopped
        return stages.training_outcome(result)
