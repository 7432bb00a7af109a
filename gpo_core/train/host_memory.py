"""Host memory of training on CPUs: make glibc's malloc give freed activations back.

glibc serves an allocation above its mmap threshold with its own mapping, unmapped when freed,
and anything smaller from its heaps, which keep freed memory. The threshold starts at 128 KiB and
rises to the size of each mapped block freed, up to 32 MiB, so after the first step most of a
step's activations (a few MiB each) come from the heaps, and one step's freed activations stay in
the process next to the next step's. Fixing the threshold maps every tensor above it afresh
(its pages faulted in each time), so it trades time for memory. Measured (3 steps, fp32, on the
494M model of benchmarks/train_memory.py; peak RSS, LoRA / full fine-tuning): glibc's default
11.2 / 12.3 GiB, fixed at 8 MiB 7.8 / 11.2 GiB, at 1 MiB 6.3 / 10.2 GiB; but at 1 MiB the
throughput benchmark's small model trained about 25% slower, at 8 MiB within its noise.

``GPO_MMAP_THRESHOLD_MIB`` sets the threshold (default 8; 0 leaves malloc as it is). A process
started with glibc's own ``MALLOC_MMAP_THRESHOLD_`` keeps that instead.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
DEFAULT_MIB = 8


def fix_mmap_threshold() -> int | None:
    """Fix glibc's mmap threshold for this process (see the module's docstring); returns the
    threshold in bytes, or None where nothing was changed (not glibc, switched off, or the
    process's environment already sets it)."""
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    raw = os.environ.get("GPO_MMAP_THRESHOLD_MIB", str(DEFAULT_MIB))
    try:
        mib = float(raw)
    except ValueError:
        raise ValueError(
            f"GPO_MMAP_THRESHOLD_MIB must be a number of MiB (0: leave malloc alone), got {raw!r}"
        ) from None
    if mib <= 0:
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; musl and others have none
    except (OSError, AttributeError):
        return None
    threshold = int(mib * 2**20)
    return threshold if mallopt(M_MMAP_THRESHOLD, threshold) == 1 else None
