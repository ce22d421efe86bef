"""Data-parallel training over several processes (issue 27): ``torchrun --nproc_per_node N`` (or several machines)
runs the same training script N times; each process trains on its own patches and PyTorch's
``DistributedDataParallel`` averages the gradients, so the N copies of the network stay identical.

:func:`setup` reads the environment torchrun sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group: ``gloo`` on CPUs, ``nccl`` on GPUs (each process on the GPU of its
``LOCAL_RANK``). Without those variables it is a no-op (one process, rank 0), so the same training code runs alone
or distributed. Rank 0 alone prepares caches, validates, logs and writes checkpoints; the others wait for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (keeps the ranks in step, e.g. to stop together)."""
        if not self.enabled:
            return bool(flag)
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0])
        if self.backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def wrap(self, model) -> Any:
        """``model`` in ``DistributedDataParallel`` when distributed (else itself)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.backend == "nccl":
            return DistributedDataParallel(model, device_ids=[self.local_rank])
        return DistributedDataParallel(model)

    def teardown(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized_here = False

    def speakers(self, log, progress):
        """``(log, progress)`` for this process: the caller's own on rank 0, silent ones on the others (only rank 0
        speaks; their lines would interleave)."""
        if self.main:
            return log, progress
        return (lambda *args, **kwargs: None), None

    def describe(self) -> dict[str, Any] | None:
        return {"world_size": self.world, "backend": self.backend} if self.enabled else None


def setup(device) -> tuple[DistContext, Any]:
    """The process group of this run (joined here when torchrun started it and nobody joined yet) and the device
    this process trains on (``cuda:LOCAL_RANK`` on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext(), device
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = getattr(device, "type", str(device)).startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        here = True
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device(f"cuda:{local_rank}")
    return DistContext(rank=rank, world=world, local_rank=local_rank, backend=dist.get_backend(),
                       initialized_here=here), device


__all__ = ["DistContext", "setup"]
