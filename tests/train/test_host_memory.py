"""glibc's mmap threshold, fixed for CPU training so that freed activations leave the process
(gpo_core/train/host_memory.py): the setting, and the retention it removes, in a fresh process."""

import json
import subprocess
import sys

import pytest

from gpo_core.train.host_memory import fix_mmap_threshold

# In a fresh process: free a 30 MiB block (glibc's dynamic threshold rises to 30 MiB), optionally
# fix the threshold, then make forty 16 MiB tensors, each followed by a small one that lives on,
# and free the large ones, as a step's activations are freed around tensors that live on. Prints
# the MiB still resident.
RETENTION = """
import json, sys, torch
from gpo_core.train.host_memory import fix_mmap_threshold

def rss_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

torch.ones(30 * 2**18).sum()  # 30 MiB of float32, mapped and freed at once: the threshold rises
fixed = fix_mmap_threshold()
before = rss_mib()
activations, kept = [], []
for _ in range(40):
    activations.append(torch.ones(4 * 2**20))  # 16 MiB
    kept.append(torch.ones(2**14))  # 64 KiB made after it, which lives on
del activations
print(json.dumps({"fixed": fixed, "retained_mib": rss_mib() - before}))
"""


def retained(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", RETENTION], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_freed_activations_leave_the_process_once_the_threshold_is_fixed(monkeypatch) -> None:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("GPO_MMAP", "MALLOC_"))}
    dynamic = retained({**base, "GPO_MMAP_THRESHOLD_MIB": "0"})
    fixed = retained(base)
    assert dynamic["fixed"] is None and dynamic["retained_mib"] > 500  # of 640 MiB freed
    assert fixed["fixed"] == 8 * 2**20 and fixed["retained_mib"] < 100


def test_the_threshold_follows_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("GPO_MMAP_THRESHOLD_MIB", "0")
    assert fix_mmap_threshold() is None
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the process's own setting is kept
    monkeypatch.setenv("GPO_MMAP_THRESHOLD_MIB", "2")
    assert fix_mmap_threshold() is None
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GPO_MMAP_THRESHOLD_MIB", "lots")
    with pytest.raises(ValueError, match=r"GPO_MMAP_THRESHOLD_MIB must be a number of MiB .* got 'lots'"):
        fix_mmap_threshold()
    if sys.platform == "linux":
        monkeypatch.setenv("GPO_MMAP_THRESHOLD_MIB", "8")
        assert fix_mmap_threshold() == 8 * 2**20
