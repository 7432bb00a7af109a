"""The GPO training loop, in plain sight: the same function runs in this process (tests, notebooks,
the embedded default) and inside each Ray Train worker (``gpo_core.train.ray_runner``).

Per optimizer step: ``grad_accumulation`` micro-batches of ``batch_size`` pairs per worker, each
pair's prompt processed once, the loss ``mean(f(beta * rho))`` against cached reference log-probs.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from gpo_core.losses import gpo_loss, resolve_loss
from gpo_core.models import config_folder, is_adapter
from gpo_core.preference import SUMS, TIE_TOLERANCE, log_ratio_difference, metrics_from_sums, preference_sums
from gpo_core.regularization import kl_from_samples, mu_weighted_square_loss
from gpo_core.train import sharding
from gpo_core.train.adapters import ADAPTER, AdapterDisabledReference, save_final, trainable_parameters
from gpo_core.train.checkpoints import load_policy, save_checkpoint
from gpo_core.train.data import TrainingData, endless_batches, load_training_data, total_steps
from gpo_core.train.device import DeviceProfile
from gpo_core.train.host_memory import fix_mmap_threshold
from gpo_core.train.metrics import MetricsSink, StdoutSink
from gpo_core.train.plan import flops_per_token, model_shape
from gpo_core.train.precision import autocast, autocast_dtype, weights_dtype
from gpo_core.train.reference import ReferenceLogprobs, ReferenceModel, compute_reference_logprobs, reference_logprobs
from gpo_core.train.run import NonFiniteLossError, RunContext, RunResult
from gpo_core.train.sampling import sample_and_score
from gpo_core.train.spec import TrainingSpec


@torch.no_grad()
def trace(
    policy: PreTrainedModel,
    reference: ReferenceModel | AdapterDisabledReference,
    data: TrainingData,
    ref: ReferenceLogprobs,
    spec: TrainingSpec,
    profile: DeviceProfile,
    step: int = 0,
) -> dict:
    """The paper's Fig. 5 quantities at this point of training: the mu-weighted square loss on
    the held-out pairs and the on-policy KL(pi_theta || pi_ref) from samples of the trace prompts.
    Sampling draws from its own generator state (seeded by the seed and step), so tracing leaves
    the training's random stream as it was."""
    record: dict = {}
    device = profile.device
    f, beta, amp_dtype = resolve_loss(spec.loss), spec.effective_beta, autocast_dtype(spec)
    policy.eval()
    with autocast(device, amp_dtype):
        if data.eval_pairs is not None:
            pairs, width = data.eval_pairs, spec.batch_size * 2
            pc, pr = compute_reference_logprobs(
                policy, pairs, data.pad_id, data.encoder_decoder, width, profile, amp_dtype, spec.logprob_chunk
            )
            assert ref.eval is not None  # held-out pairs have their reference log-probs
            rho = log_ratio_difference(pc, pr, *ref.eval)
            square = mu_weighted_square_loss(rho)
            record.update(
                square_loss=square.mean,
                square_loss_stderr=square.stderr,
                eval_rho_mean=float(rho.mean()),
                eval_accuracy=float((rho > TIE_TOLERANCE).float().mean()),
                eval_loss=float(f(beta * rho).mean()),
            )
        if data.trace_prompts:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(spec.seed + step)
                policy_lp, reference_lp = sample_and_score(
                    policy, reference.get(), data.tokenizer, data.trace_prompts, spec, device, reference.scope
                )
            kl = kl_from_samples(policy_lp, reference_lp)
            record.update(kl=kl.mean, kl_stderr=kl.stderr, kl_samples=kl.n)
    policy.train()
    return record


class _PhaseClock:
    """Where a run's wall time went, in the ``end`` record's ``seconds``: reading the data, the
    reference log-probs (pi_ref loaded and run, or the cache read), loading the policy, the steps,
    the KL traces, checkpoints and the final save. Each ``lap`` adds the time since the last to a
    phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._last, 3)
        self._last = now


def train(spec: TrainingSpec, sink: MetricsSink | None = None, context: RunContext | None = None) -> RunResult:
    """Run (or resume) one GPO training run described by ``spec``."""
    context = context or RunContext()
    sink = sink or StdoutSink()
    clock = _PhaseClock()
    device, is_main = context.device, context.rank == 0
    profile = context.describe_device(device)
    if device.type == "cpu":
        fix_mmap_threshold()  # freed activations go back to the system instead of piling up
    output_dir = Path(spec.output_dir)
    torch.manual_seed(spec.seed + context.rank)
    f, beta, amp_dtype = resolve_loss(spec.loss), spec.effective_beta, autocast_dtype(spec)

    data = load_training_data(spec)
    clock.lap("data")
    reference_model = ReferenceModel(spec.reference_path, device, weights_dtype(spec))
    steps = total_steps(spec, len(data.pairs), context.world_size)
    ref = reference_logprobs(spec, data, reference_model, context, profile, steps)
    clock.lap("reference")
    starting_weights = None
    if not data.trace_prompts:  # only the KL trace needs pi_ref itself; its log-probs are cached
        if spec.reference is None and not is_adapter(spec.policy):  # pi_ref is the policy's start
            starting_weights = reference_model.hand_over()  # loaded for a cache miss: not read twice
        reference_model.release()
    reference: ReferenceModel | AdapterDisabledReference = reference_model

    state = load_policy(spec, context, steps, sink, starting_weights)
    policy, adapters, forward, step = state.policy, state.adapters, state.forward, state.start_step
    del starting_weights
    if adapters is not None and spec.reference is None and not is_adapter(spec.policy):
        # pi_ref is the base: the policy with its adapters off. (From a trained adapter, pi_ref is
        # that adapter merged into a frozen copy, as in TRL: the ReferenceModel loads it so.)
        reference.release()
        reference = AdapterDisabledReference(adapters)
    clock.lap("load")
    if is_main:
        sink.emit({**data.report, "step": step})
        start = {"kind": "start", "step": step, "steps": steps, "pid": os.getpid(), "world_size": context.world_size}
        start["trainable_parameters"] = trainable_parameters(policy)
        sink.emit({**start, "hosts": context.hosts, **({"nodes": context.nodes} if context.nodes else {})})
    batches = endless_batches(data.pairs, spec, context.rank, context.world_size)
    for _ in range(step * spec.grad_accumulation):  # the data order continues where it stopped
        next(batches)
    tracing = spec.trace_every > 0 and (is_main or sharding.is_sharded(forward))  # sharded: all gather

    def trace_now(at: int) -> None:
        clock.lap("steps")
        with sharding.gathered(forward) if sharding.is_sharded(forward) else nullcontext():
            if is_main:
                sink.emit({"kind": "trace", "step": at, **trace(policy, reference, data, ref, spec, profile, at)})
        clock.lap("trace")

    if tracing and step == 0 and spec.trace_at_start:
        trace_now(0)

    padded, real = 0, 0
    shape = model_shape(spec.policy) if profile.peak_flops else None  # MFU on known GPUs only
    checkpointed_at = step  # a resumed run starts from a checkpoint of this step
    last: dict = {}
    stopped = False
    policy.train()
    while step < steps:
        if context.should_stop():
            stopped = True
            break
        started = time.perf_counter()
        micro = [next(batches) for _ in range(spec.grad_accumulation)]
        rows = sum(len(indices) for indices in micro)
        sums = torch.zeros(len(SUMS), dtype=torch.float64, device=device)
        tokens = 0
        # Micro-batches compute the loss and add up the metrics' sums on the device: no host sync.
        for indices in micro:
            batch = data.pairs.batch(indices, data.pad_id, data.encoder_decoder)
            tokens += batch.tokens()
            padded += batch.prompt_ids.numel() + batch.responses.numel() - batch.tokens()
            with autocast(device, amp_dtype):
                chosen, rejected = forward(batch.moved(profile.to_device))
            chosen, rejected = chosen.float(), rejected.float()
            ref_chosen, ref_rejected = profile.to_device(torch.stack([ref.chosen[indices], ref.rejected[indices]]))
            loss = gpo_loss(log_ratio_difference(chosen, rejected, ref_chosen, ref_rejected), beta, f)
            (loss * len(indices) / rows).backward()
            sums += preference_sums(chosen.detach(), rejected.detach(), ref_chosen, ref_rejected, beta, f)
        real += tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(forward.parameters(), spec.max_grad_norm or float("inf"))
        if isinstance(grad_norm, DTensor):  # sharded gradients: the norm over all shards
            grad_norm = grad_norm.full_tensor()
        # One transfer to the host per step: the metrics' sums over all workers, and the grad norm.
        totals = torch.cat([context.all_reduce(sums), grad_norm.reshape(1).to(sums)]).tolist()
        mean_loss = totals[SUMS.index("loss")] / totals[SUMS.index("pairs")]
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"non-finite loss at step {step + 1} ({mean_loss})", step + 1)
        if not math.isfinite(totals[-1]):
            raise NonFiniteLossError(f"non-finite gradient norm at step {step + 1}", step + 1)
        lr = state.scheduler.get_last_lr()[0]
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - started

        last = {
            "kind": "step",
            "step": step,
            "steps": steps,
            "pairs": int(totals[SUMS.index("pairs")]),  # this step's, over all workers
            **metrics_from_sums(totals[:-1]),
            "grad_norm": totals[-1],
            "lr": lr,
            "pairs_per_s": rows * context.world_size / elapsed,
            "tokens_per_s": tokens * context.world_size / elapsed,
            "padded_fraction": padded / max(1, padded + real),
            "peak_memory_gib": profile.peak_memory() / 2**30,
        }
        if shape is not None and profile.peak_flops:  # this worker's real tokens against its GPU's peak
            attended = batch.prompt_ids.shape[1] + batch.responses.shape[1]  # a response sees its prompt
            last["mfu"] = tokens * flops_per_token(shape, attended) / elapsed / profile.peak_flops
        if is_main and (step % spec.log_every == 0 or step == steps):
            sink.emit(last)
        if spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < steps:
            clock.lap("steps")
            save_checkpoint(context, output_dir, step, state, data.tokenizer, last)
            checkpointed_at = step
            clock.lap("checkpoint")
        if tracing and (step % spec.trace_every == 0 or step == steps):
            trace_now(step)

    clock.lap("steps")
    final_dir = None
    if stopped:
        if step > 0 and checkpointed_at != step:  # decided alike on every worker: Ray needs that
            save_checkpoint(context, output_dir, step, state, data.tokenizer, last)
    else:
        final_dir = output_dir / "final"
        weights = sharding.full_weights(forward, policy) if sharding.is_sharded(forward) else None  # collective
        if is_main:
            if adapters is not None:
                save_final(adapters, final_dir, config_folder(spec.policy))  # merged, and the adapters in final/adapter
                data.tokenizer.save_pretrained(final_dir / ADAPTER)  # a policy folder for a next run
            else:
                policy.save_pretrained(final_dir, state_dict=weights)
            data.tokenizer.save_pretrained(final_dir)
        if context.on_checkpoint is not None:
            context.on_checkpoint(last, final_dir if is_main else None)
    clock.lap("save")
    if is_main:
        end = {"kind": "end", "step": step, "stopped": stopped, "final_model_dir": str(final_dir)}
        sink.emit({**end, "seconds": clock.seconds})
    return RunResult(
        steps=step,
        final_model_dir=str(final_dir) if final_dir else None,
        last_metrics=last,
        reference_cache="hit" if ref.hit else "miss",
        stopped=stopped,
        padded_fraction=padded / max(1, padded + real),
    )
