"""The run's numeric precision: the dtype models are loaded in and the autocast around the
forward passes (``precision``: fp32, bf16 mixed, bf16-pure)."""

from __future__ import annotations

import torch

from gpo_core.train.spec import TrainingSpec


def weights_dtype(spec: TrainingSpec) -> torch.dtype:
    """The dtype the models are loaded in (and so their gradients and AdamW's moments): bf16 only
    in ``bf16-pure``; mixed ``bf16`` keeps fp32 master weights."""
    return torch.bfloat16 if spec.precision == "bf16-pure" else torch.float32


def autocast_dtype(spec: TrainingSpec) -> torch.dtype | None:
    """bf16 autocast for mixed precision; none for fp32, nor for bf16-pure (its weights are bf16)."""
    return torch.bfloat16 if spec.precision == "bf16" else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type; a context that does nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
