"""The generator service: consumes generate tasks and samples each run's final model (and, once
per job, the reference policy, from the content-keyed cache) on the evaluation prompts, in a task
child that serves task after task: vLLM when installed and able to serve the model, transformers
otherwise; one engine is kept across tasks in that child. A model family vLLM cannot serve is
remembered, so it is tried once, not per task."""

from __future__ import annotations

import json
from pathlib import Path

from gpo_core.generate import VLLMEngine, lora_capacity, model_family, start_engine
from gpo_core.stopping import StopCheck
from gpo_core.sweep import online, stages
from gpo_core.sweep.pipeline import REFERENCE
from gpo_core.sweep.spec import JobSpec
from gpo_services.common.sandbox import Emit
from gpo_services.common.worker import TaskContext, Worker

GENERATE = "gpo_services.generator.service:generate"


class Generator:
    """The task child's engines: one warm vLLM engine, moved from checkpoint to checkpoint."""

    def __init__(self) -> None:
        self.engine: VLLMEngine | None = None
        self.unservable: dict[str, str] = {}  # model family -> why vLLM cannot serve it

    def engine_for(
        self, model_dir: str, backend: str, lora_rank: int | None = None
    ) -> tuple[VLLMEngine | None, str | None]:
        """``(engine or None, note)``: the warm engine when it serves ``model_dir``'s family (and
        LoRA adapters of ``lora_rank``), a new one (probed) otherwise, or None for transformers,
        with the reason when ``auto`` fell back."""
        if backend == "transformers":
            return None, None
        needed = lora_capacity(lora_rank)
        if (
            self.engine is not None
            and self.engine.can_serve(model_dir)
            and (needed is None or (self.engine.max_lora_rank or 0) >= needed)
        ):
            return self.engine, None
        family = json.dumps(model_family(model_dir), sort_keys=True)
        if family in self.unservable and backend == "auto":
            return None, self.unservable[family]
        if self.engine is not None:
            self.engine.close()  # another job's model family: start over
            self.engine = None
        self.engine, note = start_engine(model_dir, backend, lora_rank)  # a GenerationError fails the job at once
        if note:
            self.unservable[family] = note
        return self.engine, note


_GENERATOR = Generator()  # in the task child, which serves task after task


def handle(task: dict, context: TaskContext) -> None:
    job_id, run = task["job"], task["run"]
    started = context.start_stage(task, "generate")
    if started is None:
        return
    context.run_task(GENERATE, started[1], job_id)
    context.advance(job_id, run, "generate", "done", round=task.get("round"))


def generate(payload: dict, emit: Emit, should_stop: StopCheck) -> None:
    """In the task child: the reference's samples (cached) and the run's; or, for an online
    round, the current policy's two responses per prompt of the round."""
    spec, job_dir, run = JobSpec.model_validate_json(payload["spec"]), Path(payload["job_dir"]), payload["run"]
    cache = Path(payload["cache_dir"])  # its tenant's: the reference's samples are shared by its jobs only
    reference = stages.resolve_inputs(spec).reference
    engine, note = _GENERATOR.engine_for(reference, spec.generation.backend, stages.lora_rank(spec))
    if note:
        emit({"log": note})
    backend = "vllm" if engine is not None else "transformers"
    # The reference's samples first: every run is judged against them (a round too, with online.eval_prompts).
    stages.generate_stage(spec, job_dir, REFERENCE, cache, engine, should_stop, backend)
    if payload["round"] is not None:
        online.sample_round(spec, job_dir, run, payload["round"], engine, should_stop, backend)
        return
    stages.generate_stage(spec, job_dir, run, cache, engine, should_stop, backend)


def main() -> None:
    Worker("generate", "generator", handle, keep_child=True).run()
