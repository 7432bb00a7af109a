"""Reference log-probs, computed once per (reference weights, tokenized dataset, precision) and
shared through a content-addressed cache on disk: a sweep of k runs makes one reference pass.

A run computes the log-probs of the pairs it will see, not of the whole file: a 16-step run of 4
pairs on a file of 190 scores 64 of them (TRL's up-front pass scores all 190). The cache holds NaN
for pairs nobody needed yet and is extended as later runs need more."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from gpo_core.cache import cache_root
from gpo_core.models import load_model, model_digest, on_device
from gpo_core.train.data import TokenizedPairs, TrainingData, length_grouped_batches
from gpo_core.train.device import DeviceProfile
from gpo_core.train.pairs import pair_logprobs
from gpo_core.train.precision import autocast_dtype
from gpo_core.train.run import RunContext
from gpo_core.train.spec import TrainingSpec


def cache_key(reference_folder: str | Path, pairs: TokenizedPairs, precision: str) -> str:
    text = f"{model_digest(reference_folder)}-{pairs.digest()}-{precision}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@torch.no_grad()
def compute_reference_logprobs(
    model: PreTrainedModel,
    pairs: TokenizedPairs,
    pad_id: int,
    encoder_decoder: bool,
    batch_size: int,
    profile: DeviceProfile,
    autocast_dtype: torch.dtype | None,
    chunk: int | None = None,
    indices: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_ref of the chosen and rejected responses of ``indices`` (default: every pair),
    batched by length (float32 results, NaN for the pairs not asked for)."""
    model.eval()
    chosen = torch.full((len(pairs),), float("nan"), dtype=torch.float32)
    rejected = torch.full((len(pairs),), float("nan"), dtype=torch.float32)
    wanted = range(len(pairs)) if indices is None else indices
    order = sorted(wanted, key=lambda i: len(pairs.prompts[i]) + len(pairs.chosen[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = pairs.batch(indices, pad_id, encoder_decoder).moved(profile.to_device)
        with torch.autocast(profile.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            c, r = pair_logprobs(model, batch, chunk)
        chosen[indices] = c.float().cpu()
        rejected[indices] = r.float().cpu()
    return chosen, rejected


def load_or_compute(
    cache_dir: str | Path,
    key: str,
    compute: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
    size: int,
    needed: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(chosen, rejected, hit)`` for ``size`` pairs, of which at least ``needed`` (default: all)
    are known: from the cache for ``key``, the missing ones from ``compute(missing)``, merged into
    the cache and stored atomically (a hit: nothing had to be computed)."""
    path = Path(cache_dir) / "reference-logprobs" / f"{key}.pt"
    wanted = list(range(size)) if needed is None else list(needed)
    chosen, rejected = _stored(path, size)
    missing = [i for i in wanted if not (torch.isfinite(chosen[i]) and torch.isfinite(rejected[i]))]
    if not missing:
        return chosen, rejected, True
    computed_chosen, computed_rejected = compute(missing)
    chosen, rejected = _stored(path, size)  # another run may have added some meanwhile
    chosen[missing], rejected[missing] = computed_chosen[missing], computed_rejected[missing]
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(descriptor)
    try:
        torch.save({"chosen": chosen, "rejected": rejected}, temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return chosen, rejected, False


def _stored(path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached log-probs (NaN where none is stored yet)."""
    if path.exists():
        stored = torch.load(path, weights_only=True)
        if len(stored["chosen"]) == size:
            return stored["chosen"].clone(), stored["rejected"].clone()
    empty = torch.full((size,), float("nan"), dtype=torch.float32)
    return empty, empty.clone()


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
    by the seed: :func:`gpo_core.train.data.endless_batches`)."""
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
                reference.get(),
                pairs,
                data.pad_id,
                data.encoder_decoder,
                spec.batch_size * 2,
                profile,
                autocast_dtype(spec),
                spec.logprob_chunk,
                missing,
            )

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
