"""What training needs to know of the device it runs on, in one place.

Every device-specific choice of the loop goes through a :class:`DeviceProfile`: the device's name
and dense bf16 peak (the denominator of MFU), how host tensors reach it (pinned, non-blocking
copies to a GPU) and how its memory high-water mark is read. :func:`describe_device` makes the
profile of a real device; a test hands the loop another one (``RunContext.describe_device``), so
the branches a GPU takes also run on a CPU in CI, where a GPU path cannot break unseen.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' data sheets: the denominator of MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops_of(name: str) -> float | None:
    """The dense bf16 peak of a device by its name (``NVIDIA H100 80GB HBM3``); None when unknown."""
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def process_peak_rss() -> int:
    """This process's resident-set high-water mark in bytes (what a CPU worker's memory peak is)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _pin(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.pin_memory()


@dataclass(frozen=True)
class DeviceProfile:
    """One device as the loop sees it."""

    device: torch.device
    name: str
    peak_flops: float | None  # None: no MFU is reported
    # Copies to the device are non-blocking from page-locked memory: a copy from pageable memory
    # would wait for all queued GPU work first (a host-device sync per batch).
    non_blocking: bool
    stage: Callable[[torch.Tensor], torch.Tensor]  # how a host tensor is readied for the copy
    read_peak_memory: Callable[[], int]  # bytes at the high-water mark

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on this device."""
        if not self.non_blocking:
            return tensor.to(self.device)
        return self.stage(tensor).to(self.device, non_blocking=True)

    def peak_memory(self) -> int:
        return self.read_peak_memory()


def describe_device(device: torch.device) -> DeviceProfile:
    """The profile of a real device: a CUDA GPU (pinned non-blocking copies, allocator peak, the
    peak FLOPs of a known model) or anything else (plain copies, the process's peak RSS, no MFU)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return DeviceProfile(
            device=device,
            name=name,
            peak_flops=peak_flops_of(name),
            non_blocking=True,
            stage=_pin,
            read_peak_memory=lambda: torch.cuda.max_memory_allocated(device),
        )
    return DeviceProfile(
        device=device,
        name=device.type,
        peak_flops=None,
        non_blocking=False,
        stage=lambda tensor: tensor,
        read_peak_memory=process_peak_rss,
    )
