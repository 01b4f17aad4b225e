"""Several GPUs and several hosts: PyTorch DistributedDataParallel, as SageMaker lays it out.

`resourceconfig.json` names the hosts (sorted) and this host. Every host runs one process
per GPU (one process on a CPU-only host); they rendezvous at the first host (port 29500,
or MASTER_ADDR / MASTER_PORT when set). Each process trains on its shard of every epoch's
shuffled rows (of the host's own rows when the training channel is ShardedByS3Key, see
`World.shard`), gradients are averaged by DDP, every process evaluates the whole validation
set (so early-stopping decisions agree), and only the first process writes the model,
reports and checkpoints. The first process of each host reads and encodes the channels
for its host (`World.on_hosts`); the hosts exchange what they fitted over the group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tabtransformer.errors import UserError

DEFAULT_PORT = "29500"
# How long a process waits in a collective: the other processes of a host wait while its
# first process reads and encodes the channels, which takes minutes on big tables.
COLLECTIVE_TIMEOUT = timedelta(hours=3)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among all training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    per_host: int = 1  # processes on each host

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

    @property
    def host_index(self) -> int:
        return self.rank // self.per_host

    def shard(self, order: torch.Tensor, rows_per_rank: int | None = None) -> torch.Tensor:
        """This rank's rows of a permutation; every rank gets the same count.

        Rows shared by every host: every `size`-th row of the permutation all ranks share
        (the last `len % size` rows of it wait for the next epoch). Each host's own rows
        (`rows_per_rank` given, see `tables.Labelled`): the processes of a host split its
        permutation, every `per_host`-th row, and each takes `rows_per_rank` rows of its
        share, starting over when a host has fewer rows than the largest host (as
        DistributedSampler pads), so that every rank runs the same number of steps."""
        if rows_per_rank is None:
            usable = len(order) - len(order) % self.size
            return order[self.rank : usable : self.size]
        mine = order[self.local_rank :: self.per_host]
        repeats = -(-rows_per_rank // max(1, len(mine)))
        return mine.repeat(repeats)[:rows_per_rank]

    def from_hosts(self, value: T | None) -> list[T]:
        """The `value` of each host's first process, in host order, on every process (a
        collective: every process calls it; the others' values are ignored)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value if self.local_rank == 0 else None)
        return gathered[:: self.per_host]

    def on_hosts(self, task: Callable[[], T]) -> list[T]:
        """Run `task` on the first process of each host; every process gets each host's
        result, in host order. When it fails on any host every process raises: the
        failing process its own error, the others an error naming that host."""
        result, failure, error = None, None, None
        if self.local_rank == 0:
            try:
                result = task()
            except Exception as e:
                error, failure = e, str(e)
        outcomes = self.from_hosts((result, failure))
        if error is not None:
            raise error
        for host, (_, message) in enumerate(outcomes):
            if message is not None:
                raise UserError(f"Host {host + 1} could not read its channels: {message}")
        return [r for r, _ in outcomes]

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
        return World(rank, self.world_size, local_rank, self.processes_per_host)

    def init_process_group(self, world: World) -> None:
        """Join the rendezvous at the first host (gloo on CPU, NCCL on GPUs)."""
        address = os.environ.get("MASTER_ADDR", self.hosts[0])
        port = os.environ.get("MASTER_PORT", DEFAULT_PORT)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(
            backend,
            init_method=f"tcp://{address}:{port}",
            rank=world.rank,
            world_size=world.size,
            timeout=COLLECTIVE_TIMEOUT,
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
