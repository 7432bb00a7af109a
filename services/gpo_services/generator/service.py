"""The generator service: consumes generate tasks and samples each run's final model (and, once
per job, the reference policy, from the content-keyed cache) on the evaluation prompts. vLLM
when installed, transformers otherwise; one engine is kept across tasks."""

from __future__ import annotations

from gpo_core.models import cache_root
from gpo_core.sweep import stages
from gpo_core.sweep.runner import uses_vllm
from gpo_services.common.worker import TaskContext, Worker


class Generator:
    def __init__(self):
        self.engine = None  # a warm vLLM engine, moved from checkpoint to checkpoint

    def engine_for(self, model_dir: str):
        from gpo_core.generate import VLLMEngine

        if self.engine is not None and not self.engine.can_serve(model_dir):
            self.engine.close()  # another job's model family: start over
            self.engine = None
        if self.engine is None:
            self.engine = VLLMEngine(model_dir)
        return self.engine

    def handle(self, task: dict, context: TaskContext) -> None:
        job_id, run = task["job"], task["run"]
        if context.skip_if_over(job_id, run):
            return
        spec = context.store.spec(job_id)
        context.store.transition(job_id, run, state="running", stage="generate")
        cache = cache_root()
        engine = self.engine_for(stages.resolve_inputs(spec).reference) if uses_vllm(spec) else None
        job_dir = context.job_dir(job_id)
        stages.generate_stage(spec, job_dir, stages.REFERENCE, cache, engine, context.should_stop)
        stages.generate_stage(spec, job_dir, run, cache, engine, context.should_stop)
        context.store.transition(job_id, run, state="queued", stage="judge")
        context.enqueue("judge", job_id, run)


def main() -> None:
    generator = Generator()
    try:
        Worker("generate", "generator", generator.handle).run()
    finally:
        if generator.engine is not None:
            generator.engine.close()
