"""FSDP2 for the training loop (``strategy: fsdp``): parameters, gradients and optimizer state
sharded over the workers, so each holds 1/N of them instead of a full replica (DDP).

Units: every transformer block (the model's ``_no_split_modules``, the classes transformers keeps
whole when it splits a model) and, at the root, the pair forward that wraps the model: the loop
calls the model's body and output head directly, never the model's own forward, so the rest
(embeddings, final norm, head) belongs to the module the loop does call. The optimizer is made
after sharding, so its state holds shards too.

Checkpoints are ``torch.distributed.checkpoint`` folders (every worker writes its shards: exact
resume, model and optimizer) beside a full transformers export for generation, gathered onto the
main worker. Every function here is collective: all workers call it, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

SHARDED = "sharded"  # the checkpoint's subfolder of DCP shards


def shard(forward: torch.nn.Module, model: torch.nn.Module, device: torch.device, world_size: int) -> torch.nn.Module:
    """Apply FSDP2 to each transformer block of ``model`` and to ``forward`` (which holds it) at the
    root, over one mesh of all workers on ``device``'s kind (gloo on CPUs, nccl on GPUs)."""
    block_names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in block_names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no transformer blocks (_no_split_modules): cannot shard it")
    mesh = init_device_mesh(device.type, (world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(forward, mesh=mesh)
    return forward


def is_sharded(module: torch.nn.Module) -> bool:
    return isinstance(module, FSDPModule)


@contextmanager
def gathered(forward: torch.nn.Module) -> Iterator[None]:
    """Whole parameters on every worker, kept whole until the end (no unit frees them after its
    forward), so that work outside the training forward runs on one worker alone with no
    collective: the KL trace samples on the main worker only. Collective on entry and exit."""
    # FSDP decides which unit is the root on the first forward it sees; the trace at step 0 comes
    # before any training forward, and calling a block first would make that block a root.
    assert isinstance(forward, FSDPModule), "gathered() takes a sharded forward"
    forward._get_fsdp_state()._lazy_init()
    units = [module for module in forward.modules() if isinstance(module, FSDPModule)]
    blocks = [unit for unit in units if unit is not forward]  # the root never frees after forward
    for block in blocks:
        block.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for block in blocks:
            block.set_reshard_after_forward(True, recurse=False)
        # Frees the gathered weights and forgets what these forwards recorded (their order is
        # FSDP's plan for prefetching in the next backward, which must be the same on every worker).
        forward.reset_iter_state()


def save(folder: Path, forward: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Each worker writes its shards of the model and the optimizer state into ``folder/sharded``."""
    model_state, optimizer_state = get_state_dict(forward, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder / SHARDED))


def load(folder: Path, forward: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The inverse of :func:`save`: each worker reads its shards back, exactly."""
    model_state, optimizer_state = get_state_dict(forward, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder / SHARDED))
    set_state_dict(forward, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_weights(forward: torch.nn.Module, model: torch.nn.Module, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The model's whole weights on the main worker's CPU (empty elsewhere), named as the
    transformers model names them (``forward`` holds it as ``forward.model``). A tied weight (the
    output head sharing the input embeddings) is given once, under its first name, as
    ``save_pretrained`` writes it: gathered copies no longer share memory for it to notice."""
    state = get_model_state_dict(forward, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first_name: dict[int, str] = {}
    tied = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if first_name.setdefault(id(parameter), name) != name:
            tied.add(name)
    kept = {name.removeprefix(prefix): t for name, t in state.items() if name.removeprefix(prefix) not in tied}
    return cast(dict[str, torch.Tensor], kept)  # a full state dict of a module: tensors only
