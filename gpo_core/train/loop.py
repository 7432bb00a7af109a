"""The GPO training loop, in plain sight: the same function runs in this process (tests, notebooks,
the embedded default) and inside each Ray Train worker (``gpo_core.train.ray_runner``).

Per optimizer step: ``grad_accumulation`` micro-batches of ``batch_size`` pairs per worker, each
pair's prompt processed once, the loss ``mean(f(beta * rho))`` against cached reference log-probs.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch.distributed.tensor import DTensor
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from gpo_core.conversation import ChatFormat, ConversationError, Prompt
from gpo_core.data import load_preferences, load_prompts, write_json
from gpo_core.errors import PermanentError
from gpo_core.logprobs import output_head
from gpo_core.losses import gpo_loss, resolve_loss
from gpo_core.models import cache_root, config_folder, is_adapter, is_encoder_decoder, load_model, on_device
from gpo_core.preference import SUMS, TIE_TOLERANCE, log_ratio_difference, metrics_from_sums, preference_sums
from gpo_core.regularization import kl_from_samples, mu_weighted_square_loss
from gpo_core.train import sharding
from gpo_core.train.adapters import (
    ADAPTER,
    AdapterDisabledReference,
    add_adapters,
    load_adapters,
    save_final,
    trainable_parameters,
)
from gpo_core.train.data import TokenizedPairs, length_grouped_batches, tokenize_pairs
from gpo_core.train.device import DeviceProfile, describe_device
from gpo_core.train.host_memory import fix_mmap_threshold
from gpo_core.train.metrics import MetricsSink, StdoutSink, rewind_jsonl
from gpo_core.train.pairs import disable_dropout, enable_gradient_checkpointing, pair_logprobs
from gpo_core.train.plan import flops_per_token, model_shape
from gpo_core.train.reference import cache_key, compute_reference_logprobs, load_or_compute
from gpo_core.train.sampling import sample_and_score
from gpo_core.train.spec import TrainingSpec

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "trainer_state.pt"
DIVERGED = "diverged.json"  # written where a run stopped on a non-finite loss (by rank 0 on Ray)
KEEP_CHECKPOINTS = 2


class TrainingError(PermanentError):
    """A run that cannot go on; the message says why and where."""


class NonFiniteLossError(TrainingError):
    """The loss or its gradient overflowed at ``step``: the run diverged. A sweep records such a run
    as diverged and goes on; a single training fails with this message."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


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
    # Sums a tensor over the workers (in place) and returns it; the identity in one process.
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor
    # The host each worker runs on, by rank (in the start record: where a run really trained).
    hosts: list[str] = field(default_factory=lambda: [socket.gethostname()])
    nodes: list[str] = field(default_factory=list)  # the Ray node of each worker, by rank (Ray only)
    # What the loop knows of its device (name, peak FLOPs, transfers, peak memory): a test gives
    # the loop a GPU's profile on a CPU, so every device branch runs in CI.
    describe_device: Callable[[torch.device], DeviceProfile] = describe_device


@dataclass
class RunResult:
    steps: int
    final_model_dir: str | None
    last_metrics: dict
    reference_cache: str  # "hit" or "miss"
    stopped: bool
    padded_fraction: float
    diverged: str | None = None  # why the run stopped on a non-finite loss or gradient, and at which step


def record_divergence(output_dir: str | Path, err: NonFiniteLossError, sink: MetricsSink) -> RunResult:
    """A run that diverged ends with a ``diverged`` metrics record and :data:`DIVERGED` in its folder
    (what a Ray driver reads: the workers end normally, so Ray does not retry a deterministic
    overflow from its last checkpoint); its result, as :func:`diverged_result` reads it back."""
    record = {"kind": "diverged", "step": err.step, "message": str(err)}
    sink.emit(record)
    write_json(Path(output_dir) / DIVERGED, record)
    return _diverged(record)


def diverged_result(output_dir: str | Path) -> RunResult | None:
    """The result of a run that diverged in ``output_dir``, else None."""
    path = Path(output_dir) / DIVERGED
    if not path.exists():
        return None
    return _diverged(json.loads(path.read_text()))


def _diverged(record: dict) -> RunResult:
    return RunResult(steps=record["step"] - 1, final_model_dir=None, last_metrics={}, reference_cache="unknown",
                     stopped=False, padded_fraction=0.0, diverged=record["message"])  # fmt: skip


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


def _latest_checkpoint(output_dir: Path) -> Path | None:
    folder = output_dir / CHECKPOINTS
    done = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).exists()) if folder.exists() else []
    return done[-1] if done else None


def _save_checkpoint(
    context: RunContext, output_dir: Path, step: int, policy, adapters, forward, tokenizer, optimizer, scheduler
) -> Path | None:
    """A transformers model folder plus the optimizer state; written aside, then renamed, by the
    main worker. Under FSDP every worker also writes its shards (model and optimizer) into the
    folder's ``sharded/``, and the model folder holds the weights gathered from them."""
    final = output_dir / CHECKPOINTS / f"step-{step:07d}"
    work = final.with_name(final.name + ".tmp")
    is_main, sharded = context.rank == 0, sharding.is_sharded(forward)
    if is_main:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    weights = None
    if sharded:
        context.barrier()  # the folder exists before anyone writes into it
        sharding.save(work, forward, optimizer)
        weights = sharding.full_weights(forward, policy)
    if is_main:
        (adapters or policy).save_pretrained(work, state_dict=weights)  # LoRA: the adapters only
        tokenizer.save_pretrained(work)
        optimizer_state = None if sharded else optimizer.state_dict()
        torch.save({"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, work / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        for old in sorted((output_dir / CHECKPOINTS).glob("step-*"))[:-KEEP_CHECKPOINTS]:
            if not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
    context.barrier()  # nobody reports or resumes from a folder still being written
    return final if is_main else None


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
    assert spec.epochs is not None  # the spec gives exactly one of steps and epochs
    return max(1, math.ceil(spec.epochs * n_pairs / per_step))


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


@dataclass
class TrainingData:
    """The run's data, tokenized once: training pairs, held-out pairs, trace prompts."""

    tokenizer: PreTrainedTokenizerBase
    pairs: TokenizedPairs
    eval_pairs: TokenizedPairs | None
    trace_prompts: list[Prompt]
    encoder_decoder: bool
    # What tokenizing did to the data: pairs kept, prompts and responses cut to the length
    # limits, and pairs dropped because chosen and rejected became the same tokens.
    report: dict = field(default_factory=dict)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def load_training_data(spec: TrainingSpec) -> TrainingData:
    """Read and tokenize the data; a bad dataset fails here, before any model is loaded."""
    records = load_preferences(spec.dataset, columns=spec.dataset_columns, split=spec.dataset_split)
    eval_records = load_preferences(spec.eval_pairs, columns=spec.dataset_columns) if spec.eval_pairs else []
    trace_prompts = load_prompts(spec.eval_prompts)[: spec.trace_prompts] if spec.eval_prompts else []
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_path)
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"no usable tokenizer in {spec.tokenizer_path} ({str(err).splitlines()[0]}); set 'tokenizer' in the spec"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.chat_template:  # saved with every checkpoint: generation renders prompts the same way
        tokenizer.chat_template = spec.chat_template
    lengths = (spec.max_prompt_length, spec.max_response_length, spec.truncation_side)
    try:
        pairs = tokenize_pairs(records, tokenizer, *lengths)
        eval_pairs = tokenize_pairs(eval_records, tokenizer, *lengths) if eval_records else None
        ChatFormat(tokenizer).prompt_ids([p["prompt"] for p in trace_prompts[:1]])  # renders, or says why not
    except ConversationError as err:
        raise TrainingError(f"{spec.dataset}: {err}") from None
    identical = pairs.identical()
    if len(identical) == len(pairs):
        raise TrainingError(
            f"{spec.dataset}: in every pair the chosen and rejected responses are the same tokens once cut to "
            f"max_response_length={spec.max_response_length}: nothing to learn from; raise max_response_length"
        )
    eval_identical = eval_pairs.identical() if eval_pairs is not None else []
    if eval_pairs is not None and len(eval_identical) == len(eval_pairs):
        raise TrainingError(f"{spec.eval_pairs}: in every pair the chosen and rejected responses are the same "
                            f"tokens once cut to max_response_length={spec.max_response_length}")  # fmt: skip
    report = {
        "kind": "data",
        "pairs": len(pairs) - len(identical),
        "prompts_cut": pairs.prompts_cut,
        "responses_cut": pairs.responses_cut,
        "identical_dropped": len(identical),
        "eval_identical_dropped": len(eval_identical),
    }
    return TrainingData(
        tokenizer=tokenizer,
        pairs=pairs.without(identical),
        eval_pairs=eval_pairs.without(eval_identical) if eval_pairs is not None else None,
        trace_prompts=[p["prompt"] for p in trace_prompts],
        encoder_decoder=is_encoder_decoder(spec.policy),
        report=report,
    )


class ReferenceModel:
    """pi_ref, loaded only when needed: for a reference cache miss, or to score KL trace samples."""

    def __init__(self, folder: str, device: torch.device, dtype: torch.dtype = torch.float32):
        self.folder, self.device, self.dtype = folder, device, dtype
        self.model: PreTrainedModel | None = None

    def get(self) -> PreTrainedModel:
        if self.model is None:
            self.model = on_device(load_model(self.folder, self.dtype), self.device).eval()
            self.model.requires_grad_(False)
        return self.model

    def release(self) -> None:
        self.model = None

    def hand_over(self) -> PreTrainedModel | None:
        """The loaded model, given up to become the policy's starting weights (when pi_ref is the
        policy's start and nothing else needs it): the weights are not read and held twice."""
        model, self.model = self.model, None
        if model is not None:
            model.requires_grad_(True)
        return model

    def scope(self):
        """The context pi_ref is scored in (nothing to switch for a model of its own)."""
        return nullcontext()


@dataclass
class ReferenceLogprobs:
    chosen: torch.Tensor  # [pairs], on the CPU (each micro-batch copies its rows to the device)
    rejected: torch.Tensor
    eval: tuple[torch.Tensor, torch.Tensor] | None  # the same for the held-out pairs
    hit: bool  # the training pairs' log-probs came from the cache


def visited_pairs(spec: TrainingSpec, pairs: TokenizedPairs, steps: int, world_size: int) -> list[int]:
    """The pairs a run of ``steps`` steps will see, over all its workers (the data order is fixed
    by the seed: :func:`_batches`)."""
    seen: set[int] = set()
    left, epoch = steps * spec.grad_accumulation * world_size, 0
    while left > 0 and len(seen) < len(pairs):
        for batch in length_grouped_batches(pairs, spec.batch_size, spec.seed, epoch):
            seen.update(batch)
            left -= 1
            if left == 0:
                break
        epoch += 1
    return sorted(seen)


def reference_logprobs(
    spec: TrainingSpec,
    data: TrainingData,
    reference: ReferenceModel,
    context: RunContext,
    profile: DeviceProfile,
    steps: int,
) -> ReferenceLogprobs:
    """log pi_ref of the responses the run will see (and of every held-out pair), from the shared
    cache or one pass by the main worker over what the cache lacks (the others wait at a barrier,
    then read the cache)."""
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else cache_root()

    def cached(pairs: TokenizedPairs, needed: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        def compute(missing: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return compute_reference_logprobs(
                reference.get(), pairs, data.pad_id, data.encoder_decoder, spec.batch_size * 2, profile,
                _autocast_dtype(spec), spec.logprob_chunk, missing,
            )  # fmt: skip

        if context.rank != 0:
            context.barrier()  # wait for the main worker to fill the cache
        key = cache_key(spec.reference_path, pairs, spec.precision)
        chosen, rejected, hit = load_or_compute(cache_dir, key, compute, len(pairs), needed)
        if context.rank == 0:
            context.barrier()
        return chosen, rejected, hit

    chosen, rejected, hit = cached(data.pairs, visited_pairs(spec, data.pairs, steps, context.world_size))
    held_out = cached(data.eval_pairs, None)[:2] if data.eval_pairs is not None else None
    return ReferenceLogprobs(chosen, rejected, held_out, hit)


def load_policy(
    spec: TrainingSpec, context: RunContext, steps: int, sink: MetricsSink, loaded: PreTrainedModel | None = None
):
    """``(policy, adapters, forward, optimizer, scheduler, step)``: fresh at step 0, or restored from the last
    checkpoint when there is one to resume from (announced to the sink). ``forward`` is the pair
    forward the steps call: the policy wrapped for DDP (``context.wrap_model``) or sharded (FSDP).
    With ``lora``, ``adapters`` is the peft model around ``policy`` (else None). ``loaded`` is the
    policy's starting weights already in memory (the reference pass's model), used instead of
    reading them again when the run starts fresh. The metrics file is cut back to the records
    before the resumed step."""
    resume = context.resume_from or _latest_checkpoint(Path(spec.output_dir))
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
            raise TrainingError(f"{resume / STATE_FILE}: not a trainer state (holds more than tensors and "
                                f"numbers), so it was not loaded: {str(err).splitlines()[0]}") from None  # fmt: skip
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
    return policy, adapters, forward, optimizer, scheduler, step


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
    f, beta, autocast_dtype = resolve_loss(spec.loss), spec.effective_beta, _autocast_dtype(spec)
    policy.eval()
    with _autocast(device, autocast_dtype):
        if data.eval_pairs is not None:
            pairs, width = data.eval_pairs, spec.batch_size * 2
            pc, pr = compute_reference_logprobs(
                policy, pairs, data.pad_id, data.encoder_decoder, width, profile, autocast_dtype, spec.logprob_chunk
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


def weights_dtype(spec: TrainingSpec) -> torch.dtype:
    """The dtype the models are loaded in (and so their gradients and AdamW's moments): bf16 only
    in ``bf16-pure``; mixed ``bf16`` keeps fp32 master weights."""
    return torch.bfloat16 if spec.precision == "bf16-pure" else torch.float32


def _autocast_dtype(spec: TrainingSpec) -> torch.dtype | None:
    """bf16 autocast for mixed precision; none for fp32, nor for bf16-pure (its weights are bf16)."""
    return torch.bfloat16 if spec.precision == "bf16" else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train(spec: TrainingSpec, sink: MetricsSink | None = None, context: RunContext | None = None) -> RunResult:
    """Run (or resume) one GPO training run described by ``spec``."""
    context = context or RunContext()
    sink = sink or StdoutSink()
    device, is_main = context.device, context.rank == 0
    profile = context.describe_device(device)
    if device.type == "cpu":
        fix_mmap_threshold()  # freed activations go back to the system instead of piling up
    output_dir = Path(spec.output_dir)
    torch.manual_seed(spec.seed + context.rank)
    f, beta, autocast_dtype = resolve_loss(spec.loss), spec.effective_beta, _autocast_dtype(spec)

    data = load_training_data(spec)
    reference_model = ReferenceModel(spec.reference_path, device, weights_dtype(spec))
    steps = total_steps(spec, len(data.pairs), context.world_size)
    ref = reference_logprobs(spec, data, reference_model, context, profile, steps)
    starting_weights = None
    if not data.trace_prompts:  # only the KL trace needs pi_ref itself; its log-probs are cached
        if spec.reference is None and not is_adapter(spec.policy):  # pi_ref is the policy's start
            starting_weights = reference_model.hand_over()  # loaded for a cache miss: not read twice
        reference_model.release()
    reference: ReferenceModel | AdapterDisabledReference = reference_model

    policy, adapters, forward, optimizer, scheduler, step = load_policy(spec, context, steps, sink, starting_weights)
    del starting_weights
    if adapters is not None and spec.reference is None and not is_adapter(spec.policy):
        # pi_ref is the base: the policy with its adapters off. (From a trained adapter, pi_ref is
        # that adapter merged into a frozen copy, as in TRL: the ReferenceModel loads it so.)
        reference.release()
        reference = AdapterDisabledReference(adapters)
    if is_main:
        sink.emit({**data.report, "step": step})
        start = {"kind": "start", "step": step, "steps": steps, "pid": os.getpid(), "world_size": context.world_size}
        start["trainable_parameters"] = trainable_parameters(policy)
        sink.emit({**start, "hosts": context.hosts, **({"nodes": context.nodes} if context.nodes else {})})
    batches = _batches(data.pairs, spec, context.rank, context.world_size)
    for _ in range(step * spec.grad_accumulation):  # the data order continues where it stopped
        next(batches)
    tracing = spec.trace_every > 0 and (is_main or sharding.is_sharded(forward))  # sharded: all gather

    def trace_now(at: int) -> None:
        with sharding.gathered(forward) if sharding.is_sharded(forward) else nullcontext():
            if is_main:
                sink.emit({"kind": "trace", "step": at, **trace(policy, reference, data, ref, spec, profile, at)})

    if tracing and step == 0:
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
            with _autocast(device, autocast_dtype):
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
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
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
            _checkpoint(
                context, output_dir, step, policy, adapters, forward, data.tokenizer, optimizer, scheduler, last
            )
            checkpointed_at = step
        if tracing and (step % spec.trace_every == 0 or step == steps):
            trace_now(step)

    final_dir = None
    if stopped:
        if step > 0 and checkpointed_at != step:  # decided alike on every worker: Ray needs that
            _checkpoint(
                context, output_dir, step, policy, adapters, forward, data.tokenizer, optimizer, scheduler, last
            )
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
    if is_main:
        sink.emit({"kind": "end", "step": step, "stopped": stopped, "final_model_dir": str(final_dir)})
    return RunResult(
        steps=step,
        final_model_dir=str(final_dir) if final_dir else None,
        last_metrics=last,
        reference_cache="hit" if ref.hit else "miss",
        stopped=stopped,
        padded_fraction=padded / max(1, padded + real),
    )


def _checkpoint(context, output_dir, step, policy, adapters, forward, tokenizer, optimizer, scheduler, metrics) -> None:
    """Every worker takes part in writing the checkpoint (the main one alone under DDP) and reports
    it (Ray needs all of them to)."""
    folder = _save_checkpoint(context, output_dir, step, policy, adapters, forward, tokenizer, optimizer, scheduler)
    if context.on_checkpoint is not None:
        context.on_checkpoint(metrics, folder)
