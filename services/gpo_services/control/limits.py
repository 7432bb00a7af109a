"""What a job may ask of the deployment: Ray Train workers and GPUs it has, and a bounded amount of
sampling. A spec within its own field limits can still ask for far more than a deployment can give
(1024 workers and GPUs on a CPU stack; 65 runs x 100,000 prompts x 64 samples x 4096 tokens): such a
job is refused at submission, by field, with the deployment's limit, instead of occupying the
workers for days or failing hours later."""

from __future__ import annotations

from gpo_core.data import count_records
from gpo_core.sweep.spec import JobSpec
from gpo_services.common.settings import Settings
from gpo_services.control.errors import ApiError
from gpo_services.control.storage import upload_records


def prompt_count(spec: JobSpec, settings: Settings) -> int:
    """Evaluation prompts the job will sample (the spec's paths already resolved): the built-in
    task's, an upload's as counted when it arrived, else counted in the file."""
    if spec.task is not None:
        available = spec.task.eval_prompts
    else:
        assert spec.eval_prompts is not None  # JobSpec requires them without a built-in task
        recorded = upload_records(settings, spec.eval_prompts)
        available = recorded if recorded is not None else count_records(spec.eval_prompts)
    return min(available, spec.generation.prompts or available)


def check_capacity(spec: JobSpec, settings: Settings) -> None:
    """A 422 naming each field that asks for more than this deployment gives."""
    details = []

    def refuse(field: str, message: str) -> None:
        details.append({"field": field, "message": message})

    training, generation = spec.training, spec.generation
    if training.workers > settings.max_train_workers:
        refuse(
            "training.workers",
            f"{training.workers} Ray Train workers asked; this deployment gives a run "
            f"at most {settings.max_train_workers} (GPO_MAX_TRAIN_WORKERS)",
        )
    if training.use_gpu and not settings.gpu_training:
        refuse("training.use_gpu", "this deployment's trainers have no GPUs (GPO_GPU_TRAINING)")
    try:
        prompts = prompt_count(spec, settings)
    except Exception as err:
        refuse("eval_prompts", f"could not be read: {type(err).__name__}")
        prompts = 0
    models = len(spec.run_list()) + 1  # every run and the reference
    tokens = models * prompts * generation.n * generation.max_new_tokens
    # An online run also samples two responses per prompt of each round (and its evaluation prompts).
    online_runs = sum(1 for run in spec.run_list() if spec.rounds(run))
    rounds = online_runs * spec.online.sampled_per_run * generation.max_new_tokens if spec.online else 0
    if tokens + rounds > settings.max_generated_tokens:
        online = (
            f" + {online_runs} online runs x {spec.online.sampled_per_run:,} round samples x max_new_tokens"
            if spec.online and online_runs
            else ""
        )
        refuse(
            "generation",
            f"{models} models x {prompts} prompts x n {generation.n} x max_new_tokens "
            f"{generation.max_new_tokens}{online} = {tokens + rounds:,} tokens to sample; at most "
            f"{settings.max_generated_tokens:,} per job (GPO_MAX_GENERATED_TOKENS)",
        )
    if details:
        raise ApiError(422, "invalid_spec", "; ".join(f"{d['field']}: {d['message']}" for d in details), details)
