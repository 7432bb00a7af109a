"""The trained state and its checkpoints: the policy (with its LoRA adapters), the forward the
steps call (wrapped for DDP or sharded by FSDP), the optimizer and the schedule, made fresh or
restored from the last checkpoint, and written atomically every ``checkpoint_every`` steps."""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from gpo_core.logprobs import output_head
from gpo_core.models import config_folder, is_adapter, load_model, on_device
from gpo_core.train import sharding
from gpo_core.train.adapters import add_adapters, load_adapters
from gpo_core.train.metrics import MetricsSink, rewind_jsonl
from gpo_core.train.pairs import disable_dropout, enable_gradient_checkpointing, pair_logprobs
from gpo_core.train.precision import weights_dtype
from gpo_core.train.run import METRICS_FILE, RunContext, TrainingError
from gpo_core.train.spec import TrainingSpec

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainingState:
    """What the steps change and a checkpoint keeps. ``adapters``: the peft model around
    ``policy`` under LoRA (else None). ``start_step``: the step it was restored at (0 when fresh)."""

    policy: PreTrainedModel
    adapters: PeftModel | None
    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    start_step: int


class _PairForward(torch.nn.Module):
    """One module around the shared-prompt forward, so that DDP sees a single forward per step."""

    def __init__(self, model: PreTrainedModel, chunk: int | None):
        super().__init__()
        self.model, self.chunk = model, chunk

    def forward(self, batch):
        chosen, rejected = pair_logprobs(self.model, batch, self.chunk)
        # Copies, not views of one tensor: FSDP hooks the outputs of the module it wraps for the
        # backward pass, and warns that an in-place change to a view would bypass its hook.
        return chosen.clone(), rejected.clone()


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The last complete checkpoint: never one still being written (``step-N.tmp``, renamed when
    complete), whose state file a worker killed mid-save leaves cut short."""
    folder = output_dir / CHECKPOINTS
    if not folder.exists():
        return None
    done = sorted(p for p in folder.glob("step-*") if not p.name.endswith(".tmp") and (p / STATE_FILE).exists())
    return done[-1] if done else None


def _optimizer(spec: TrainingSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Over ``model``'s parameters as they are: made after sharding, its state holds shards."""
    if spec.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            [p for p in model.parameters() if p.requires_grad],
            lr=spec.lr,
            weight_decay=spec.weight_decay,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    return torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=spec.weight_decay)


def load_policy(
    spec: TrainingSpec, context: RunContext, steps: int, sink: MetricsSink, loaded: PreTrainedModel | None = None
) -> TrainingState:
    """The trained state: fresh at step 0, or restored from the last checkpoint when there is one
    to resume from (announced to the sink). Its ``forward`` is the pair forward the steps call: the
    policy wrapped for DDP (``context.wrap_model``) or sharded (FSDP). ``loaded`` is the
    policy's starting weights already in memory (the reference pass's model), used instead of
    reading them again when the run starts fresh. The metrics file is cut back to the records
    before the resumed step."""
    resume = context.resume_from or latest_checkpoint(Path(spec.output_dir))
    adapters = None
    if spec.lora is None and not is_adapter(spec.policy):
        if loaded is not None and not resume:
            policy = loaded
        else:
            policy = on_device(load_model(resume if resume else spec.policy, weights_dtype(spec)), context.device)
        if spec.disable_dropout:
            disable_dropout(policy)
    else:  # the base model with adapters: the checkpoint's, the policy folder's (trained further), or new
        base = loaded if loaded is not None else load_model(config_folder(spec.policy), weights_dtype(spec))
        base = on_device(base, context.device)
        if spec.disable_dropout:
            disable_dropout(base)  # the model's own dropout; LoRA's (lora.dropout) is added after, as asked
        start = resume or (Path(spec.policy) if is_adapter(spec.policy) else None)
        if start:
            adapters = load_adapters(base, start)
        else:
            assert spec.lora is not None  # a policy that is no adapter gets adapters only when asked
            adapters = add_adapters(base, spec.lora)
        policy = cast(PreTrainedModel, adapters.get_base_model())  # the adapters are inside its layers
    if spec.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    output_head(policy)  # checked on the whole model, before any sharding
    forward: torch.nn.Module = _PairForward(policy, spec.logprob_chunk)
    if spec.strategy == "fsdp":
        forward = sharding.shard(forward, policy, context.device, context.world_size)
    else:
        forward = context.wrap_model(forward)
    optimizer = _optimizer(spec, forward)
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[spec.schedule]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=spec.warmup_steps, num_training_steps=steps)
    step = 0
    if resume:
        try:  # tensors and numbers only: unpickling a planted file must not run its code
            state = torch.load(resume / STATE_FILE, weights_only=True)
        except pickle.UnpicklingError as err:
            raise TrainingError(
                f"{resume / STATE_FILE}: not a trainer state (holds more than tensors and "
                f"numbers), so it was not loaded: {str(err).splitlines()[0]}"
            ) from None
        if sharding.is_sharded(forward):
            sharding.load(resume, forward, optimizer)
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
    if context.rank == 0:  # records of the steps this run trains (again) go: none is listed twice
        rewind_jsonl(Path(spec.output_dir) / METRICS_FILE, step if resume else -1)
        if resume:
            sink.emit({"kind": "resumed", "step": step, "checkpoint": str(resume)})
    return TrainingState(policy, adapters, forward, optimizer, scheduler, step)


def save_checkpoint(
    context: RunContext,
    output_dir: Path,
    step: int,
    state: TrainingState,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict,
) -> None:
    """A transformers model folder plus the optimizer state, written aside, then renamed, by the
    main worker; under FSDP every worker also writes its shards (model and optimizer) into the
    folder's ``sharded/``, and the model folder holds the weights gathered from them. Every worker
    then reports it with ``metrics`` (Ray needs all of them to)."""
    final = output_dir / CHECKPOINTS / f"step-{step:07d}"
    work = final.with_name(final.name + ".tmp")
    is_main, sharded = context.rank == 0, sharding.is_sharded(state.forward)
    if is_main:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    weights = None
    if sharded:
        context.barrier()  # the folder exists before anyone writes into it
        sharding.save(work, state.forward, state.optimizer)
        weights = sharding.full_weights(state.forward, state.policy)
    if is_main:
        (state.adapters or state.policy).save_pretrained(str(work), state_dict=weights)  # LoRA: the adapters only
        tokenizer.save_pretrained(work)
        optimizer_state = None if sharded else state.optimizer.state_dict()
        trainer_state = {"step": step, "optimizer": optimizer_state, "scheduler": state.scheduler.state_dict()}
        torch.save(trainer_state, work / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        for old in sorted((output_dir / CHECKPOINTS).glob("step-*"))[:-KEEP_CHECKPOINTS]:
            if not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
    context.barrier()  # nobody reports or resumes from a folder still being written
    if context.on_checkpoint is not None:
        context.on_checkpoint(metrics, final if is_main else None)
