"""Several GPUs and several hosts: PyTorch DistributedDataParallel, as SageMaker lays it out.

`resourceconfig.json` names the hosts (sorted) and this host. Every host runs one process
per GPU (one process on a CPU-only host); they rendezvous at the first host (port 29500,
or MASTER_ADDR / MASTER_PORT when set). Each process trains on its shard of every epoch's
shuffled rows, gradients are averaged by DDP, every process evaluates the whole validation
set (so early-stopping decisions agree), and only the first process writes the model,
reports and checkpoints.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_PORT = "29500"


@dataclass(frozen=True)
class World:
    """This process's place among all training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a shared permutation; every rank gets the same count."""
        usable = len(order) - len(order) % self.size
        return order[self.rank : usable : self.size]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (e.g. a SIGTERM)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


@dataclass(frozen=True)
class Cluster:
    """The hosts of a training job and this host's index among them."""

    hosts: list[str]
    host_index: int
    processes_per_host: int

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.processes_per_host

    @classmethod
    def from_resource_config(cls, path: Path) -> Cluster:
        """Hosts from SageMaker's resourceconfig.json (absent: this host alone); one process
        per GPU, or PROCESSES_PER_HOST when set (e.g. several gloo processes on a CPU)."""
        local = int(os.environ.get("PROCESSES_PER_HOST", max(1, torch.cuda.device_count())))
        if not path.is_file():
            return cls(["localhost"], 0, local)
        config = json.loads(path.read_text())
        hosts = sorted(config.get("hosts") or [config["current_host"]])
        return cls(hosts, hosts.index(config["current_host"]), local)

    def world(self, local_rank: int) -> World:
        rank = self.host_index * self.processes_per_host + local_rank
        return World(rank, self.world_size, local_rank)

    def init_process_group(self, world: World) -> None:
        """Join the rendezvous at the first host (gloo on CPU, NCCL on GPUs)."""
        address = os.environ.get("MASTER_ADDR", self.hosts[0])
        port = os.environ.get("MASTER_PORT", DEFAULT_PORT)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(
            backend, init_method=f"tcp://{address}:{port}", rank=world.rank, world_size=world.size
        )


def wrap(model: torch.nn.Module, world: World, partial: bool = False) -> torch.nn.Module:
    """The module to train: DDP around `model` when there are several processes.

    `partial`: some parameters get no gradient in a step (pretraining leaves the MLP out,
    and an MLM head whose column had no masked cell)."""
    if not world.distributed:
        return model
    device_ids = [world.local_rank] if torch.cuda.is_available() else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=partial
    )
