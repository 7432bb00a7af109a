"""Reference log-probs, computed once per (reference weights, tokenized dataset, precision) and
shared through a content-addressed cache on disk: a sweep of k runs makes one reference pass."""

from __future__ import annotations

import hashlib
import os
import tempfile
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_ref of every chosen and rejected response, batched by length (float32 results)."""
    model.eval()
    chosen = torch.empty(len(pairs), dtype=torch.float32)
    rejected = torch.empty(len(pairs), dtype=torch.float32)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs.prompts[i]) + len(pairs.chosen[i]))
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
    compute,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(chosen, rejected, hit)``: the cached tensors for ``key``, or ``compute()`` stored atomically."""
    path = Path(cache_dir) / "reference-logprobs" / f"{key}.pt"
    if path.exists():
        stored = torch.load(path, weights_only=True)
        return stored["chosen"], stored["rejected"], True
    chosen, rejected = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(descriptor)
    try:
        torch.save({"chosen": chosen, "rejected": rejected}, temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return chosen, rejected, False
