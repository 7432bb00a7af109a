"""The branches a GPU takes, run on the CPU: a DeviceProfile with a GPU's name and peak FLOPs,
non-blocking staged copies and its own peak-memory reading, handed to the real loop. The MFU
branch once crashed every GPU run at step 2 (it rebound the run context to an int) while no test
reached it; these do, in fp32 and under bf16 autocast."""

import dataclasses

import pytest
import torch

from gpo_core.train.device import PEAK_BF16_FLOPS, DeviceProfile, describe_device, peak_flops_of, process_peak_rss
from gpo_core.train.loop import train
from gpo_core.train.metrics import ListSink
from gpo_core.train.run import RunContext
from tests.train.test_loop import make_spec


class GpuStandIn:
    """A GPU's profile on the CPU: an H100's name and peak, staged non-blocking copies (the
    page-locking itself needs an accelerator; ``stage`` counts the tensors that would be pinned)
    and a peak-memory reading of its own."""

    def __init__(self) -> None:
        self.staged = 0
        self.readings = 0

    def stage(self, tensor: torch.Tensor) -> torch.Tensor:
        self.staged += 1
        return tensor.clone()  # a pinned copy is a new host tensor too

    def read_peak_memory(self) -> int:
        self.readings += 1
        return 3 * 2**30

    def describe(self, device: torch.device) -> DeviceProfile:
        name = "NVIDIA H100 80GB HBM3"
        return DeviceProfile(device, name, peak_flops_of(name), True, self.stage, self.read_peak_memory)


def _steps(sink: ListSink) -> list[dict]:
    return [r for r in sink.records if r["kind"] == "step"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_gpu_branches_run_on_the_cpu_and_change_no_loss(small_task, tmp_path, cache_dir, precision) -> None:
    stand_in = GpuStandIn()
    gpu_sink, cpu_sink = ListSink(), ListSink()
    spec = make_spec(small_task, tmp_path / "gpu", cache_dir, steps=3, precision=precision, checkpoint_every=2)
    train(spec, gpu_sink, RunContext(describe_device=stand_in.describe))
    plain = spec.model_copy(update={"output_dir": str(tmp_path / "cpu")})
    train(plain, cpu_sink)

    gpu_steps, cpu_steps = _steps(gpu_sink), _steps(cpu_sink)
    assert [r["step"] for r in gpu_steps] == [1, 2, 3]  # past step 2, where the MFU branch crashed
    for record in gpu_steps:
        assert 0 < record["mfu"] < 1e-3  # a tiny model's FLOPs against an H100's 989 TFLOP/s
        assert record["peak_memory_gib"] == 3.0
    assert all("mfu" not in r for r in cpu_steps)
    assert [r["loss"] for r in gpu_steps] == [r["loss"] for r in cpu_steps]
    assert [r["grad_norm"] for r in gpu_steps] == [r["grad_norm"] for r in cpu_steps]
    # Every batch went through the staged copy: 4 tensors per micro-batch and its reference
    # log-probs, plus the reference pass's batches.
    assert stand_in.staged >= 3 * 5 and stand_in.readings == 3


def test_mfu_counts_the_real_tokens_against_the_peak(small_task, tmp_path, cache_dir) -> None:
    stand_in = GpuStandIn()
    sink = ListSink()
    train(make_spec(small_task, tmp_path, cache_dir, steps=2), sink, RunContext(describe_device=stand_in.describe))
    from gpo_core.train.plan import flops_per_token, model_shape

    shape = model_shape(small_task.artifacts.model_dir)
    for record in _steps(sink):
        achieved = record["mfu"] * PEAK_BF16_FLOPS["H100"]  # model FLOP/s
        per_token = achieved / record["tokens_per_s"]
        # Between the FLOPs of a token that attends to nothing and one that attends to 1,000 positions.
        assert flops_per_token(shape, 0) <= per_token <= flops_per_token(shape, 1000)


def test_known_gpus_have_their_peak_and_others_none() -> None:
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_of("NVIDIA H200") == 989e12
    assert peak_flops_of("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops_of("NVIDIA GeForce RTX 3090") is None
    cpu = describe_device(torch.device("cpu"))
    assert cpu.peak_flops is None and not cpu.non_blocking
    tensor = torch.arange(4)
    assert cpu.to_device(tensor) is tensor  # no copy on the same device
    assert cpu.peak_memory() == process_peak_rss() > 0
    staged = dataclasses.replace(cpu, non_blocking=True, stage=torch.Tensor.clone)
    moved = staged.to_device(tensor)
    assert moved is not tensor and torch.equal(moved, tensor)
