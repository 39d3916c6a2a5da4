"""Process-group helpers: the same train and evaluate code runs alone or under ``torchrun``.

Without ``torchrun`` (no WORLD_SIZE > 1 in the environment) every helper is a no-op:
rank 0 of 1, no sampler, no wrapping, every item this process's share.
"""

from __future__ import annotations

import os
from typing import Optional, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

T = TypeVar("T")


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env() -> None:
    """Join the process group ``torchrun`` describes (nccl on GPUs, gloo on CPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        dist.init_process_group(backend)


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Ranks of the process group (1 without distribution)."""
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's rank on its machine (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes of the group on this machine (1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank in the group (0 without distribution)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or no distribution): the process that writes files."""
    return not active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing without distribution)."""
    if active():
        dist.barrier()


def sampler(dataset: Dataset, shuffle_seed: Optional[int]) -> Optional[DistributedSampler]:
    """Each rank's share of the data (shuffled by ``shuffle_seed`` when given)."""
    if not active():
        return None
    return DistributedSampler(
        dataset, shuffle=shuffle_seed is not None, seed=shuffle_seed or 0, drop_last=False
    )


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` when distributed, else the model itself."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def rewrap(current: nn.Module, model: nn.Module, device: torch.device) -> nn.Module:
    """A fresh DDP wrapper after requires_grad changed (DDP fixes its parameters at wrap)."""
    return wrap(model, device) if active() else current


def sum_dict(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over the ranks."""
    if not active():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=False))


def gather_rows(ids: torch.Tensor, *columns: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate per-rank rows on every rank, dropping rows repeated by the sampler."""
    if not active():
        return (ids, *columns)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (ids, *columns))
    ids = torch.cat([g[0] for g in gathered])
    cols = [torch.cat([g[k + 1] for g in gathered]) for k in range(len(columns))]
    _, first = np.unique(ids.cpu().numpy(), return_index=True)  # first occurrence of each id
    keep = torch.from_numpy(np.sort(first))
    return (ids[keep], *[c[keep] for c in cols])


def my_share(items: list[T]) -> list[tuple[int, T]]:
    """This rank's items with their positions: every world_size-th, from its rank on
    (round robin keeps the shares within one item of each other)."""
    return list(enumerate(items))[rank() :: world_size()]


def gather_to_main(value: T) -> Optional[list[T]]:
    """Every rank's ``value`` on rank 0, in rank order (``[value]`` without distribution);
    None on the other ranks. Tensors in ``value`` should be on the CPU."""
    if not active():
        return [value]
    gathered: Optional[list] = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
