"""Many processes and machines with torch's own launcher, ``torchrun``.

``torchrun --nproc_per_node K -m smoothcert certify ...`` starts K processes; each reads its
rank from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins
a process group: NCCL on CUDA, gloo on CPU. Without ``torchrun`` everything runs in one process
and nothing here does anything.

Where a machine has fewer GPUs than ranks (say 2 ranks on one GPU), the ranks share the GPUs
round-robin and the group uses gloo, because NCCL refuses two ranks on one GPU. Each rank's
torch thread count is set by :func:`smoothcert.runtime.perf.set_threads`, which divides the
cores among the local ranks unless ``OMP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["DistContext", "cuda_placement"]


def cuda_placement(local_rank: int, local_world_size: int, device_count: int) -> tuple[int, str]:
    """This rank's GPU index and process-group backend.

    One GPU per local rank with NCCL while there are enough; otherwise GPU ``local_rank %
    device_count`` over gloo (NCCL does not allow two ranks of a group on the same GPU).
    """
    if device_count < 1:
        raise ValueError(f"device_count must be >= 1, got {device_count!r}")
    if local_world_size <= device_count:
        return local_rank, "nccl"
    return local_rank % device_count, "gloo"


@dataclass
class DistContext:
    """This process's place among ``world_size`` processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized: bool = False
    backend: str = ""

    @classmethod
    def single(cls) -> DistContext:
        return cls()

    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        """Join the process group ``torchrun`` describes in the environment, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device != "cpu" and not device.startswith("cpu")
        if use_cuda:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            index, backend = cuda_placement(local, local_world, torch.cuda.device_count())
            torch.cuda.set_device(index)
            dev = torch.device("cuda", index)
        else:
            dev, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, initialized=True, backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` when there are several processes."""
        if self.world_size <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sampler(self, dataset: Any, *, seed: int) -> Any:
        """A ``DistributedSampler`` giving this rank its shard of a shuffled epoch, or None alone."""
        if self.world_size <= 1:
            return None
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized = False
