"""``torch.distributed`` helpers (started by ``torchrun``): join the process group, rank and world size.

gloo on CPUs, NCCL on GPUs. On GPUs each rank must ``torch.cuda.set_device(local_rank)`` before the process
group is used (NCCL collectives of Python objects go through the current device): :func:`init_from_env`
does it.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather", "comm_device", "init_from_env", "is_distributed", "rank_and_world"]

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1): NCCL with
    ``cuda:LOCAL_RANK`` made current where CUDA is available, gloo otherwise. True when distributed."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    log.info("rank %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)
    return True


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def comm_device(group: dist.ProcessGroup | None) -> torch.device:
    """Where tensors for collectives live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(t: Tensor, world: int, group: dist.ProcessGroup | None) -> list[Tensor]:
    """Every rank's copy of ``t`` (same shape on every rank), in rank order."""
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    return out
