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
from pathlib import Path

import torch
from transformers import PreTrainedModel

from gpo_core.models import model_digest
from gpo_core.train.data import TokenizedPairs
from gpo_core.train.device import DeviceProfile
from gpo_core.train.pairs import pair_logprobs


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
