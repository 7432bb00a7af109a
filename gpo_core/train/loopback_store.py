"""The process group's rendezvous on loopback, for a Ray of the task's own.

Ray Train's torch backend lets rank 0 host torch's TCPStore, and torch binds that store to every
interface (``::``) whatever ``MASTER_ADDR`` says: for as long as a run trains, anyone on the network
could connect to it and write the keys the workers wait on. A task's private Ray is one machine, so
here rank 0 hosts the store on a socket bound to 127.0.0.1 (torch's ``master_listen_fd``) and every
rank, rank 0 included, joins it as a client (torch's ``TORCHELASTIC_USE_AGENT_STORE``). A shared Ray
cluster (``RAY_ADDRESS`` set) keeps Ray's own backend: its workers are on other machines.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

LOOPBACK = "127.0.0.1"

# Rank 0's store and its socket: they live as long as that worker process does.
_hosted: list[Any] = []


def host_store() -> int:
    """In rank 0's worker: serve a TCPStore on a loopback socket; return its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    store = dist.TCPStore(LOOPBACK, port, is_master=True, master_listen_fd=listener.fileno(), wait_for_workers=False)
    _hosted[:] = [listener, store]
    return int(port)


def join_store(port: int) -> None:
    """In every worker: the next ``env://`` rendezvous joins the loopback store as a client."""
    os.environ.update({"MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True"})


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: Any) -> None:  # a TorchConfig
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        port = worker_group.execute_single(0, host_store)
        worker_group.execute(join_store, port=port)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _setup_torch_process_group,
                    backend=backend,
                    world_rank=rank,
                    world_size=len(worker_group),
                    init_method="env://",
                    timeout_s=backend_config.timeout_s,
                )
                for rank in range(len(worker_group))
            ]
        )


class LoopbackTorchConfig(TorchConfig):
    """Ray Train's TorchConfig with the rendezvous store on loopback (see the module's docstring)."""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return _LoopbackTorchBackend
