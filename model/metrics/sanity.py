"""Model-parameter randomisation sanity check (Adebayo et al. 2018), beyond the reference.

Compute the saliency of the same (image, prototype) pairs twice: with the trained model
and with a copy whose weights are randomised. A faithful saliency method depends on the
weights, so the two maps must be dissimilar. Similarities, per pair of maps (a, b) of
shape (N, H, W) (or (N, L)), each returning (N,) float64:

* :func:`spearman`: Spearman rank correlation of the pixel values (average ranks for
  ties), in [-1, 1]; ``absolute=True`` ranks |a| and |b| (Adebayo report both).
* :func:`top_mask_iou`: IoU of the two top-5 % masks S (structural agreement of where
  the evidence is, without SSIM), in [0, 1].

NaN for a pair in which a map is constant (correlation undefined). The verdict:
:func:`randomisation_verdict`.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torch import Tensor

from model.metrics.common import Absent, ArrayLike, as_tensor, mean_of, to_numpy
from model.metrics.saliency import TOP_FRACTION, top_fraction_mask


def _pairs(a: ArrayLike, b: ArrayLike) -> tuple[Tensor, Tensor]:
    x = as_tensor(a).double()
    y = as_tensor(b, torch.float64, device=x.device)
    if x.shape != y.shape:
        raise ValueError(f"maps differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 1:
        x, y = x[None], y[None]
    return x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)


def average_ranks(x: Tensor) -> Tensor:
    """(N, L) 0-based ranks along the last axis, tied values sharing their mean rank."""
    n, length = x.shape
    values, order = torch.sort(x, dim=-1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    offset = (torch.arange(n, device=x.device) * length)[:, None]
    group = torch.cumsum(starts.long(), -1) - 1 + offset  # unique over rows
    pos = torch.arange(length, dtype=torch.float64, device=x.device).expand(n, length)
    sums = torch.zeros(n * length, dtype=torch.float64, device=x.device)
    sums.index_add_(0, group.reshape(-1), pos.reshape(-1))
    counts = torch.bincount(group.reshape(-1), minlength=n * length).double()
    mean_rank = (sums / counts.clamp(min=1))[group]
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def _correlation(x: Tensor, y: Tensor) -> np.ndarray:
    xc = x - x.mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    denom = (xc.square().sum(-1) * yc.square().sum(-1)).sqrt()
    r = (xc * yc).sum(-1) / denom.clamp(min=1e-300)
    return to_numpy(torch.where(denom > 0, r.clamp(-1, 1), torch.full_like(r, float("nan"))))


def spearman(a: ArrayLike, b: ArrayLike, absolute: bool = False) -> np.ndarray:
    """(N,) Spearman rank correlation between maps a[n] and b[n]; NaN if either is constant."""
    x, y = _pairs(a, b)
    if absolute:
        x, y = x.abs(), y.abs()
    return _correlation(average_ranks(x), average_ranks(y))


def top_mask_iou(a: ArrayLike, b: ArrayLike, fraction: float = TOP_FRACTION) -> np.ndarray:
    """(N,) IoU of the top-``fraction`` masks of a[n] and b[n] (maps (N, H, W)).

    Two empty masks (no positive saliency in either) give NaN here: nothing to compare.
    """
    if as_tensor(a).dim() < 3:
        raise ValueError("top_mask_iou needs maps of shape (N, H, W)")
    sa, sb = top_fraction_mask(a, fraction), top_fraction_mask(b, fraction)
    sa, sb = sa.reshape(sa.shape[0], -1), sb.reshape(sb.shape[0], -1)
    inter = (sa & sb).sum(-1, dtype=torch.float64)
    union = (sa | sb).sum(-1, dtype=torch.float64)
    iou = inter / union.clamp(min=1)
    return to_numpy(torch.where(union > 0, iou, torch.full_like(iou, float("nan"))))


def randomisation_verdict(similarities: Union[ArrayLike, list], threshold: float = 0.5) -> dict:
    """Verdict of the randomisation check from per-pair similarities (trained vs randomised).

    ``passed`` is True when the mean of the defined similarities is below ``threshold``
    (the saliency changed when the weights were destroyed), False otherwise, None when no
    similarity is defined. Returns ``{"mean_similarity": float | Absent, "threshold",
    "pairs": number of defined pairs, "passed"}``.
    """
    values = (
        similarities.detach().cpu().numpy()
        if isinstance(similarities, Tensor)
        else np.asarray(similarities, dtype=np.float64)
    )
    values = values.astype(np.float64).ravel()
    mean = mean_of(values, empty_reason="no defined similarity (constant maps)")
    passed = None if isinstance(mean, Absent) else bool(mean < threshold)
    return {
        "mean_similarity": mean,
        "threshold": float(threshold),
        "pairs": int(np.count_nonzero(~np.isnan(values))),
        "passed": passed,
    }
