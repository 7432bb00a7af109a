"""The GPO training loop, in plain sight: the same function runs in this process (tests, notebooks,
the embedded default) and inside each Ray Train worker (``gpo_core.train.ray_runner``).

Per optimizer step: ``grad_accumulation`` micro-batches of ``batch_size`` pairs per worker, each
pair's prompt processed once, the loss ``mean(f(beta * rho))`` against cached reference log-probs.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, get_scheduler

from gpo_core.data import load_preferences, load_prompts
from gpo_core.losses import resolve_loss
from gpo_core.models import cache_root, is_encoder_decoder, load_model
from gpo_core.preference import log_ratio_difference, preference_loss
from gpo_core.regularization import kl_from_samples, mu_weighted_square_loss
from gpo_core.train.data import TokenizedPairs, length_grouped_batches, tokenize_pairs
from gpo_core.train.metrics import MetricsSink, StdoutSink
from gpo_core.train.pairs import pair_logprobs
from gpo_core.train.reference import cache_key, compute_reference_logprobs, load_or_compute
from gpo_core.train.spec import TrainingSpec

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
KEEP_CHECKPOINTS = 2


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and where."""


class NonFiniteLossError(TrainingError):
    pass


@dataclass
class RunContext:
    """What differs between in-process and distributed runs."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Called with (metrics, checkpoint folder or None) at every checkpoint: Ray's report.
    on_checkpoint: Callable[[dict, Path | None], None] | None = None
    resume_from: Path | None = None
    should_stop: Callable[[], bool] = lambda: False
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model  # DDP
    barrier: Callable[[], None] = lambda: None


@dataclass
class RunResult:
    steps: int
    final_model_dir: str | None
    last_metrics: dict
    reference_cache: str  # "hit" or "miss"
    stopped: bool
    padded_fraction: float


class _PairForward(torch.nn.Module):
    """One module around the shared-prompt forward, so that DDP sees a single forward per step."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return pair_logprobs(self.model, batch)


def _latest_checkpoint(output_dir: Path) -> Path | None:
    folder = output_dir / CHECKPOINTS
    done = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).exists()) if folder.exists() else []
    return done[-1] if done else None


def _save_checkpoint(output_dir: Path, step: int, model, tokenizer, optimizer, scheduler) -> Path:
    """A transformers model folder plus the optimizer state; written aside, then renamed."""
    final = output_dir / CHECKPOINTS / f"step-{step:07d}"
    work = final.with_name(final.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    torch.save(
        {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, work / STATE_FILE
    )
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    for old in sorted((output_dir / CHECKPOINTS).glob("step-*"))[:-KEEP_CHECKPOINTS]:
        if not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def _batches(pairs: TokenizedPairs, spec: TrainingSpec, rank: int, world_size: int) -> Iterator[list[int]]:
    """Endless micro-batches for this worker: epoch after epoch, workers taking turns."""
    epoch = 0
    while True:
        for i, batch in enumerate(length_grouped_batches(pairs, spec.batch_size, spec.seed, epoch)):
            if i % world_size == rank:
                yield batch
        epoch += 1


def total_steps(spec: TrainingSpec, n_pairs: int, world_size: int) -> int:
    if spec.steps is not None:
        return spec.steps
    per_step = spec.batch_size * spec.grad_accumulation * world_size
    return max(1, math.ceil(spec.epochs * n_pairs / per_step))


def _optimizer(spec: TrainingSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    if spec.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            model.parameters(),
            lr=spec.lr,
            weight_decay=spec.weight_decay,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    return torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)


def train(spec: TrainingSpec, sink: MetricsSink | None = None, context: RunContext | None = None) -> RunResult:
    """Run (or resume) one GPO training run described by ``spec``."""
    context = context or RunContext()
    sink = sink or StdoutSink()
    device = context.device
    output_dir = Path(spec.output_dir)
    is_main = context.rank == 0
    torch.manual_seed(spec.seed + context.rank)
    autocast_dtype = torch.bfloat16 if spec.precision == "bf16" else None
    f = resolve_loss(spec.loss)
    beta = spec.effective_beta

    # Data first: a bad dataset fails here, before any model is loaded.
    records = load_preferences(spec.dataset)
    eval_records = load_preferences(spec.eval_pairs) if spec.eval_pairs else []
    trace_prompts = load_prompts(spec.eval_prompts)[: spec.trace_prompts] if spec.eval_prompts else []
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_path)
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"no usable tokenizer in {spec.tokenizer_path} ({str(err).splitlines()[0]}); set 'tokenizer' in the spec"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lengths = (spec.max_prompt_length, spec.max_response_length, spec.truncation_side)
    pairs = tokenize_pairs(records, tokenizer, *lengths)
    eval_pairs = tokenize_pairs(eval_records, tokenizer, *lengths) if eval_records else None
    encoder_decoder = is_encoder_decoder(spec.policy)
    pad_id = tokenizer.pad_token_id

    # Reference log-probs: from the shared cache, or one pass by the main worker.
    reference_model: PreTrainedModel | None = None

    def reference() -> PreTrainedModel:
        nonlocal reference_model
        if reference_model is None:
            reference_model = load_model(spec.reference_path).to(device).eval()
            reference_model.requires_grad_(False)
        return reference_model

    cache_dir = Path(spec.cache_dir) if spec.cache_dir else cache_root()
    hits = []

    def cached_reference(data: TokenizedPairs) -> tuple[torch.Tensor, torch.Tensor]:
        key = cache_key(spec.reference_path, data, spec.precision)

        def compute():
            ref = reference()
            return compute_reference_logprobs(
                ref, data, pad_id, encoder_decoder, spec.batch_size * 2, device, autocast_dtype
            )

        if not is_main:
            context.barrier()  # wait for the main worker to fill the cache
        chosen, rejected, hit = load_or_compute(cache_dir, key, compute)
        if is_main:
            context.barrier()
        hits.append(hit)
        return chosen, rejected

    ref_chosen, ref_rejected = cached_reference(pairs)
    eval_ref = cached_reference(eval_pairs) if eval_pairs is not None else None
    if not trace_prompts and reference_model is not None:
        reference_model = None  # not needed again: free it

    # Policy, optimizer, schedule; resume from the last checkpoint when there is one.
    steps = total_steps(spec, len(pairs), context.world_size)
    resume = context.resume_from or _latest_checkpoint(output_dir)
    policy = load_model(resume if resume else spec.policy).to(device)
    optimizer = _optimizer(spec, policy)
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[spec.schedule]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=spec.warmup_steps, num_training_steps=steps)
    step = 0
    if resume:
        state = torch.load(resume / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        if is_main:
            sink.emit({"kind": "resumed", "step": step, "checkpoint": str(resume)})
    if is_main:
        sink.emit({"kind": "start", "step": step, "steps": steps, "pid": os.getpid(), "world_size": context.world_size})
    forward = context.wrap_model(_PairForward(policy))
    batches = _batches(pairs, spec, context.rank, context.world_size)
    for _ in range(step * spec.grad_accumulation):  # the data order continues where it stopped
        next(batches)

    def trace(at_step: int) -> None:
        record: dict = {"kind": "trace", "step": at_step}
        policy.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if eval_pairs is not None:
                pc, pr = compute_reference_logprobs(
                    policy, eval_pairs, pad_id, encoder_decoder, spec.batch_size * 2, device, autocast_dtype
                )
                rho = log_ratio_difference(pc, pr, *eval_ref)
                square = mu_weighted_square_loss(rho)
                record.update(
                    square_loss=square.mean,
                    square_loss_stderr=square.stderr,
                    eval_rho_mean=float(rho.mean()),
                    eval_accuracy=float((rho > 0).float().mean()),
                    eval_loss=float(f(beta * rho).mean()),
                )
            if trace_prompts:
                from gpo_core.train.sampling import sample_and_score

                policy_lp, reference_lp = sample_and_score(
                    policy, reference(), tokenizer, [p["prompt"] for p in trace_prompts], spec, device
                )
                kl = kl_from_samples(policy_lp, reference_lp)
                record.update(kl=kl.mean, kl_stderr=kl.stderr, kl_samples=kl.n)
        policy.train()
        sink.emit(record)

    padded, real = 0, 0
    checkpointed_at = step  # a resumed run starts from a checkpoint of this step
    last: dict = {}
    stopped = False
    policy.train()
    if is_main and spec.trace_every and step == 0:
        trace(0)
    while step < steps:
        if context.should_stop():
            stopped = True
            break
        started = time.perf_counter()
        micro = [next(batches) for _ in range(spec.grad_accumulation)]
        rows = sum(len(m) for m in micro)
        outputs = []
        tokens = 0
        for indices in micro:
            batch = pairs.batch(indices, pad_id, encoder_decoder).to(device)
            tokens += batch.tokens()
            padded += batch.prompt_ids.numel() + batch.responses.numel() - batch.tokens()
            real += batch.tokens()
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                chosen, rejected = forward(batch)
            out = preference_loss(chosen.float(), rejected.float(), ref_chosen[indices].to(device),
                                  ref_rejected[indices].to(device), beta, f)  # fmt: skip
            if not torch.isfinite(out.loss):
                raise NonFiniteLossError(f"non-finite loss at step {step + 1} ({out.loss.item()})")
            (out.loss * len(indices) / rows).backward()
            outputs.append((chosen.detach().float(), rejected.detach().float(), indices))
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), spec.max_grad_norm or float("inf"))
        if not torch.isfinite(grad_norm):
            raise NonFiniteLossError(f"non-finite gradient norm at step {step + 1}")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - started

        all_indices = [i for _, _, idx in outputs for i in idx]
        summary = preference_loss(
            torch.cat([c for c, _, _ in outputs]), torch.cat([r for _, r, _ in outputs]),
            ref_chosen[all_indices].to(device), ref_rejected[all_indices].to(device), beta, f,
        ).metrics  # fmt: skip
        last = {
            "kind": "step",
            "step": step,
            "steps": steps,
            **summary,
            "grad_norm": float(grad_norm),
            "lr": lr,
            "pairs_per_s": rows * context.world_size / elapsed,
            "tokens_per_s": tokens * context.world_size / elapsed,
            "padded_fraction": padded / max(1, padded + real),
        }
        if is_main and (step % spec.log_every == 0 or step == steps):
            sink.emit(last)
        if spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < steps:
            _checkpoint(context, output_dir, step, policy, tokenizer, optimizer, scheduler, last, is_main)
            checkpointed_at = step
        if is_main and spec.trace_every and (step % spec.trace_every == 0 or step == steps):
            trace(step)

    final_dir = None
    if stopped:
        if step > 0 and checkpointed_at != step:  # decided alike on every worker: Ray needs that
            _checkpoint(context, output_dir, step, policy, tokenizer, optimizer, scheduler, last, is_main)
    else:
        final_dir = output_dir / "final"
        if is_main:
            policy.save_pretrained(final_dir)
            tokenizer.save_pretrained(final_dir)
        if context.on_checkpoint is not None:
            context.on_checkpoint(last, final_dir if is_main else None)
    if is_main:
        sink.emit({"kind": "end", "step": step, "stopped": stopped, "final_model_dir": str(final_dir)})
    return RunResult(
        steps=step,
        final_model_dir=str(final_dir) if final_dir else None,
        last_metrics=last,
        reference_cache="hit" if hits[0] else "miss",
        stopped=stopped,
        padded_fraction=padded / max(1, padded + real),
    )


def _checkpoint(context, output_dir, step, policy, tokenizer, optimizer, scheduler, metrics, is_main) -> None:
    """The main worker writes the checkpoint; every worker reports (Ray needs all of them to)."""
    folder = _save_checkpoint(output_dir, step, policy, tokenizer, optimizer, scheduler) if is_main else None
    if context.on_checkpoint is not None:
        context.on_checkpoint(metrics, folder)
