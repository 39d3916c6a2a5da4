"""Which torch device a stage or worker uses (params ``segment.device``, ``train.device``,
``evaluate.device``; their form is checked by ``Params.check``)."""

from __future__ import annotations

from pipeline.errors import ParamsError


def resolve_device(name: str, key: str, index: int = 0) -> str:
    """auto -> ``cuda:<index mod GPUs>`` when GPUs exist, else cpu; others unchanged. A GPU
    asked for on a machine without one is a one-line error naming ``key``."""
    import torch

    if name == "auto":
        count = torch.cuda.device_count()
        return f"cuda:{index % count}" if count else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"{key} is {name} but no CUDA device is available")
    return name


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, else the machine's count)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1


def worker_count(requested: int | None, processes_per_machine: int = 1, cap: int = 1024) -> int:
    """``requested`` when set, else the usable cores shared among ``processes_per_machine``
    (at least 1, at most ``cap``): the default of every worker-count param."""
    if requested is not None:
        return requested
    return max(1, min(cap, usable_cores() // max(1, processes_per_machine)))
