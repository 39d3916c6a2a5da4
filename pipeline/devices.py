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
