"""The embedded runner: a whole sweep in this process, no Redis and no services (``gpo run``).

The stages are the services' stages, in the order of a run's lifecycle
(:mod:`gpo_core.sweep.pipeline`): the reference's samples, then each run's stages until it is over
(:class:`~gpo_core.sweep.chain.RunChain`: an online run's rounds first; a run that diverges in
training ends there, recorded as such), one run after another or several at a time in worker
processes (:mod:`gpo_core.sweep.parallel`), then
the job's finishing step (pairwise comparisons, the judge's own accuracy, the report). Every stage
skips work already on disk, so running the same spec into the same folder again resumes where it
stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpo_core.cache import cache_root
from gpo_core.generate import start_engine
from gpo_core.sweep import online, stages
from gpo_core.sweep.chain import Events, RunChain, stage_event
from gpo_core.sweep.pipeline import FINISH, REFERENCE
from gpo_core.sweep.preflight import preflight
from gpo_core.sweep.spec import JobSpec


def run_job(
    spec: JobSpec,
    job_dir: str | Path,
    cache_dir: str | Path | None = None,
    events: Events | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    parallel: int = 1,
) -> Path | None:
    """Run the sweep into ``job_dir``; returns the report's path, or None when stopped early.
    ``parallel``: runs taken through their stages at a time, each in a worker process of its own
    (:mod:`gpo_core.sweep.parallel`); 1 runs them one after another in this process."""
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    job_dir = Path(job_dir)
    cache = Path(cache_dir) if cache_dir else cache_root()
    emit = events or (lambda event: None)

    def stage(run: str, name: str, state: str, **extra) -> None:
        stage_event(emit, run, name, state, **extra)

    stages.write_job_file(spec, job_dir)
    stage("job", "prepare", "running")
    inputs = stages.resolve_inputs(spec, progress=lambda message: emit({"kind": "log", "message": message}))
    stage("job", "prepare", "done")
    api_key = stages.embedded_api_key(spec)
    keys = {field: stages.embedded_api_key(spec, field) for field in spec.judges()}
    preflight(spec, inputs, lambda message: emit({"kind": "log", "message": message}), api_keys=keys)
    engine, note = start_engine(inputs.reference, spec.generation.backend, stages.lora_rank(spec))
    for message in (note, online.engine_restart_note(spec, engine)):
        if message:
            emit({"kind": "log", "message": message})
    backend = "vllm" if engine is not None else "transformers"
    chain = RunChain(spec, job_dir, cache, engine, backend, api_key, keys)
    runs = spec.run_ids()
    try:
        stage(REFERENCE, "generate", "running")
        stages.generate_stage(spec, job_dir, REFERENCE, cache, engine, backend=backend)
        stage(REFERENCE, "generate", "done")
        if parallel > 1 and len(runs) > 1:
            from gpo_core.sweep.parallel import run_in_parallel

            if engine is not None:  # each worker starts its own: free this one's memory and cores
                engine.close()
                engine = chain.engine = None
            completed = run_in_parallel(chain, runs, parallel, emit, stop_requested)
        else:
            completed = all(chain.run_to_end(run, emit, stop_requested) for run in runs)
    finally:
        if engine is not None:
            engine.close()
    if not completed:
        return None
    report = stages.finish_stage(spec, job_dir, api_key=api_key, progress=lambda step, state: stage("job", step, state))
    stage("job", FINISH, "done", path=str(report))
    return report
