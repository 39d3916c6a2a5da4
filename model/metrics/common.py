"""The value convention every metric of :mod:`model.metrics` follows.

* A **scalar** metric is a ``float`` (plain Python float) or an :class:`Absent`.
* A **per-item** metric (one value per image, per map, per (image, prototype) pair) is a
  ``numpy.ndarray`` of float64 on the CPU, in which ``NaN`` marks an item for which the
  metric is *undefined* (e.g. an empty saliency mask in a denominator); each function
  says which items become NaN. A per-item function returns an :class:`Absent` instead of
  an array when the ground truth it needs is missing altogether (``None``).
* :class:`Absent` means "not measured" with the reason (no object segmentation, no part
  keypoints, fewer than two classes ...). It is never 0 and never silently averaged in.
* :func:`mean_of` reduces any mix of floats, arrays and Absents: NaNs and
  Absents are skipped; when nothing defined is left the result is an :class:`Absent`.
* :func:`to_jsonable` turns a value into what a metrics JSON holds: a float, or
  ``{"absent": reason}``.

Inputs may be numpy arrays or torch tensors (any device); computations run in torch on
the input's device (so the evaluate stage can keep its batches on the GPU) and only the
small per-item results come back to the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[np.ndarray, Tensor]


@dataclass(frozen=True)
class Absent:
    """A metric that was not measured, and why (e.g. ``"no object segmentation"``)."""

    reason: str

    def to_json(self) -> dict:
        return {"absent": self.reason}


MetricValue = Union[float, Absent]


def _defined(values: Any) -> tuple[np.ndarray, list[str]]:
    """Flatten floats / arrays / tensors / Absents into the defined (finite) values."""
    if isinstance(values, (Absent, float, int, np.ndarray, Tensor)):
        values = [values]
    out: list[np.ndarray] = []
    reasons: list[str] = []
    for v in values:
        if isinstance(v, Absent):
            if v.reason not in reasons:
                reasons.append(v.reason)
            continue
        if isinstance(v, Tensor):
            v = v.detach().cpu().numpy()
        a = np.asarray(v, dtype=np.float64).ravel()
        out.append(a[~np.isnan(a)])
    flat = np.concatenate(out) if out else np.zeros(0)
    return flat, reasons


def mean_of(
    values: Union[Iterable[Any], Any], empty_reason: str = "undefined for every item"
) -> MetricValue:
    """Mean of every defined value in ``values`` (floats, arrays, tensors, Absents).

    NaN entries and :class:`Absent` items are ignored. If nothing defined is left, returns
    ``Absent`` carrying the Absents' reasons (joined with "; ") or ``empty_reason``.
    """
    flat, reasons = _defined(values)
    if flat.size == 0:
        return Absent("; ".join(reasons) if reasons else empty_reason)
    return float(flat.mean())


def to_jsonable(value: MetricValue) -> Union[float, dict, None]:
    """A float for the metrics JSON, or ``{"absent": reason}``; a NaN float becomes None."""
    if isinstance(value, Absent):
        return value.to_json()
    value = float(value)
    return None if math.isnan(value) else value


# --- internal helpers shared by the metric modules ---------------------------------------


def as_tensor(
    x: ArrayLike, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None
) -> Tensor:
    """``x`` as a torch tensor (no copy where possible), optionally cast / moved."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        a = np.asarray(x)
        t = torch.as_tensor(a if a.flags.writeable else a.copy())
    if device is not None:
        t = t.to(device)
    if dtype is not None:
        t = t.to(dtype)
    return t


def as_bool(x: ArrayLike, device: Optional[torch.device] = None) -> Tensor:
    """A boolean mask: bool as is, any other dtype as ``x > 0`` (binarise soft masks first)."""
    t = as_tensor(x, device=device)
    return t if t.dtype == torch.bool else t > 0


def to_numpy(t: Tensor) -> np.ndarray:
    """A per-item result as float64 numpy on the CPU."""
    return t.detach().to("cpu", torch.float64).numpy()
