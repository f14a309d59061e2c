"""Data-parallel training under ``torchrun``: process group, rank, and who writes files.

``torchrun --nproc_per_node N -m mnistgan train ...`` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set. Each process trains on its own shard of every epoch's order with
``train.batch_size / N`` images per step; DistributedDataParallel averages the gradients, so the
global batch and the learning rates mean what they mean on one device. Rank 0 alone writes files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


def is_main_process() -> bool:
    """Whether this process writes files: the only one, or rank 0 of those torchrun started."""
    return int(os.environ.get("RANK", "0")) == 0


# The handle of the last collective, held until the next one. A gloo worker thread that destroys a
# finished collective releases its tensors, which needs the GIL; if the process has begun to exit
# by then, it aborts ("terminate called without an active exception"). The run's last collectives
# (the replica check, a stop agreed on) come just before exit, so their handles are kept here: the
# worker then only lets go of its reference, and this process destroys the work itself, GIL held.
_last_collective: list = []


def _collective(start):
    """Run ``start(async_op=True)``, wait for it, and keep its handle (see ``_last_collective``)."""
    work = start(async_op=True)
    _last_collective[:] = [work]  # before waiting: a wait that fails ends the process too
    work.wait()


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_type: str) -> "Distributed":
        """Join the process group torchrun describes in the environment; a single process otherwise."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank (a picklable object; the current CUDA device must be set)."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def any_flag(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any (a Ctrl-C seen by one rank stops all)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        _collective(lambda async_op: dist.all_reduce(value, op=dist.ReduceOp.MAX, async_op=async_op))
        return bool(value.item())

    def check_replicas(self, *networks: torch.nn.Module) -> str:
        """SHA-256 of the networks' parameters, checked equal on every rank (else RuntimeError)."""
        digest = hashlib.sha256()
        for network in networks:
            for parameter in network.parameters():
                digest.update(parameter.detach().float().cpu().numpy().tobytes())
        local = digest.hexdigest()
        if self.enabled:
            # all_gather rather than all_gather_object, whose handle cannot be kept (see _last_collective).
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
            gathered = [torch.zeros(digest.digest_size, dtype=torch.uint8, device=device) for _ in range(self.world_size)]
            mine = torch.tensor(list(digest.digest()), dtype=torch.uint8, device=device)
            _collective(lambda async_op: dist.all_gather(gathered, mine, async_op=async_op))
            digests = {bytes(tensor.cpu().tolist()).hex() for tensor in gathered}
            if len(digests) != 1:
                raise RuntimeError(f"the {self.world_size} processes ended with different weights: {sorted(digests)}")
        return local

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()  # _last_collective stays: a worker may not have let go of it yet
