"""Saliency-map metrics: S, R, VLC, object/background overlap, IOR, pointing game.

Shapes: a saliency map is a float array (..., H, W) on the image-sized canvas (for
ProtoMask: PRP of the best-matching view pasted back into its box, zero elsewhere); the
usual batch is (N, K, H, W) for the top-K prototypes of N images. ``G`` is the ground-truth
object mask (N, H, W) (bool; any other dtype is read as ``G > 0`` — binarise soft masks
such as CUB's first, the reference keeps pixels above half the maximum) and is broadcast
over the prototype axis. All functions are batched; per-item results are float64 numpy
arrays of shape ``S.shape[:-2]`` with NaN where the item is undefined; a missing ``G``
(None) gives :class:`Absent`.

**S (top 5 % binarisation).** For a map with L = H * W pixels let k = max(1, ceil(0.05 L))
and t = the k-th largest saliency value. S = {pixels with saliency >= t} -- every pixel
tied with the threshold is included, so |S| >= k -- intersected, by default
(``positive_only``), with {saliency > 0}. S depends only on the order of the values, so it
is invariant to multiplying the map by any positive constant. Why positive-only: a pasted
ProtoMask map is zero outside its box; when the box covers less than 5 % of the image, the
threshold is 0 and without the restriction S would swallow the whole zero canvas. A map
with no positive value therefore has an empty S; the metrics below say how they treat an
empty S (NaN where it is a denominator). The reference (``torch.quantile`` at 0.95, pixels
>= the quantile) selects the same pixels for distinct values, except for rounding in
which of the two neighbours of the 95th-percentile position is the threshold.

**R** = saliency * S (saliency restricted to S, zero elsewhere).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from model.metrics.common import Absent, ArrayLike, as_bool, as_tensor, to_numpy

TOP_FRACTION = 0.05
NO_SEGMENTATION = "no ground-truth object segmentation"


def _maps(saliency: ArrayLike) -> Tensor:
    s = as_tensor(saliency)
    if not s.is_floating_point():
        s = s.float()
    if s.dim() < 2:
        raise ValueError(f"saliency must be (..., H, W), got {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("saliency contains NaN or inf")
    return s


def top_fraction_mask(
    saliency: ArrayLike, fraction: float = TOP_FRACTION, positive_only: bool = True
) -> Tensor:
    """S: bool tensor of the saliency's shape (..., H, W), the top ``fraction`` pixels per map.

    See the module doc for the exact tie rule (>= the k-th largest value, k =
    max(1, ceil(fraction * H * W))) and ``positive_only``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    s = _maps(saliency)
    flat = s.reshape(-1, s.shape[-2] * s.shape[-1])
    n = flat.shape[1]
    k = max(1, math.ceil(fraction * n - 1e-9))
    threshold = flat.topk(k, dim=1).values[:, -1:]
    mask = flat >= threshold
    if positive_only:
        mask &= flat > 0
    return mask.reshape(s.shape)


def restrict(saliency: ArrayLike, S: ArrayLike) -> Tensor:
    """R = saliency restricted to S (zero outside S), same shape."""
    s = _maps(saliency)
    return s * as_bool(S, device=s.device)


def _align(G: ArrayLike, like: Tensor) -> Tensor:
    """G (N, H, W) or (H, W) as bool, reshaped to broadcast against ``like`` (N, ..., H, W)."""
    g = as_bool(G, device=like.device)
    if g.shape[-2:] != like.shape[-2:] or g.shape[:-2] != like.shape[: g.dim() - 2]:
        raise ValueError(f"G {tuple(g.shape)} does not match maps {tuple(like.shape)}")
    extra = like.dim() - g.dim()
    return g.reshape(g.shape[:-2] + (1,) * extra + g.shape[-2:])


def _count(x: Tensor) -> Tensor:
    return x.sum(dim=(-2, -1), dtype=torch.float64)


def _nan_where(values: Tensor, undefined: Tensor) -> np.ndarray:
    return to_numpy(torch.where(undefined, torch.full_like(values, float("nan")), values))


def object_overlap(S: ArrayLike, G: Optional[ArrayLike]) -> np.ndarray | Absent:
    """100 * |S and G| / |G| per map. Range [0, 100].

    ``S`` (N, ..., H, W) bool; ``G`` (N, H, W). NaN where G is empty (missing ground truth
    for that image) or S is empty (a map without positive saliency explains nothing; it is
    left out here as in every S-based metric, so count such maps separately). None G ->
    Absent.
    """
    if G is None:
        return Absent(NO_SEGMENTATION)
    s = as_bool(S)
    g = _align(G, s)
    inter, size_g = _count(s & g), _count(g).expand(s.shape[:-2])
    undefined = (size_g == 0) | (_count(s) == 0)
    return _nan_where(100.0 * inter / size_g.clamp(min=1), undefined)


def background_overlap(S: ArrayLike, G: Optional[ArrayLike]) -> np.ndarray | Absent:
    """100 * (1 - |S and G| / |S|) per map: the share of S outside the object. Range [0, 100].

    NaN where S is empty or G is empty (missing ground truth for that image). None G -> Absent.
    """
    if G is None:
        return Absent(NO_SEGMENTATION)
    s = as_bool(S)
    g = _align(G, s)
    inter, size_s = _count(s & g), _count(s)
    size_g = _count(g).expand(s.shape[:-2])
    value = 100.0 * (1.0 - inter / size_s.clamp(min=1))
    return _nan_where(value, (size_s == 0) | (size_g == 0))


def ior(
    saliency: ArrayLike, G: Optional[ArrayLike], S: Optional[ArrayLike] = None
) -> np.ndarray | Absent:
    """Inside-outside relevance per map: mean normalised R inside G minus mean outside G.

    r = max(R, 0) / max(R) per map (R = saliency restricted to S; S defaults to
    :func:`top_fraction_mask`), so r is in [0, 1]. IOR = mean of r over S and G minus mean
    of r over S and not G, a side with no pixel of S contributing 0 (the reference's
    convention; it averages over the non-zero pixels of R, which is S here). Range [-1, 1]:
    1 = all of S inside the object at full relevance. NaN where S is empty, R has no
    positive value, or G is empty. None G -> Absent.
    """
    if G is None:
        return Absent(NO_SEGMENTATION)
    s = _maps(saliency)
    mask = top_fraction_mask(s) if S is None else as_bool(S, device=s.device)
    g = _align(G, s)
    r = (s * mask).clamp(min=0).double()
    peak = r.amax(dim=(-2, -1), keepdim=True)
    r = torch.where(peak > 0, r / peak.clamp(min=1e-300), torch.zeros_like(r))
    inside, outside = mask & g, mask & ~g
    n_in, n_out = _count(inside), _count(outside)
    mean_in = (r * inside).sum(dim=(-2, -1)) / n_in.clamp(min=1)
    mean_out = (r * outside).sum(dim=(-2, -1)) / n_out.clamp(min=1)
    size_g = _count(g).expand(s.shape[:-2])
    undefined = (_count(mask) == 0) | (peak[..., 0, 0] <= 0) | (size_g == 0)
    return _nan_where(mean_in - mean_out, undefined)


def pointing_energy(saliency: ArrayLike, G: Optional[ArrayLike]) -> np.ndarray | Absent:
    """Energy pointing game: 100 * sum of max(saliency, 0) inside G / sum over the image.

    Uses the full map (not S). Range [0, 100]. NaN where the map has no positive value or
    G is empty. None G -> Absent.
    """
    if G is None:
        return Absent(NO_SEGMENTATION)
    s = _maps(saliency)
    g = _align(G, s)
    e = s.clamp(min=0).double()
    total = e.sum(dim=(-2, -1))
    inside = (e * g).sum(dim=(-2, -1))
    size_g = _count(g).expand(s.shape[:-2])
    return _nan_where(100.0 * inside / total.clamp(min=1e-300), (total <= 0) | (size_g == 0))


def pointing_hit(saliency: ArrayLike, G: Optional[ArrayLike]) -> np.ndarray | Absent:
    """Classic pointing game: 100 if a pixel with the map's maximum value lies in G, else 0.

    Ties: a hit when ANY maximal pixel is in G (deterministic, no argmax order). The mean
    over maps is the hit rate in %. NaN where the map has no positive value or G is empty.
    None G -> Absent.
    """
    if G is None:
        return Absent(NO_SEGMENTATION)
    s = _maps(saliency)
    g = _align(G, s)
    peak = s.amax(dim=(-2, -1), keepdim=True)
    hit = ((s == peak) & g).any(dim=-1).any(dim=-1).double() * 100.0
    size_g = _count(g).expand(s.shape[:-2])
    return _nan_where(hit, (peak[..., 0, 0] <= 0) | (size_g == 0))


def pairwise_iou(S: ArrayLike) -> Tensor:
    """(..., K, K) float64 IoU between every two masks of ``S`` (..., K, H, W).

    IoU of two empty masks is defined as 1 (they are identical), of an empty and a
    non-empty mask 0.
    """
    s = as_bool(S)
    flat = s.reshape(*s.shape[:-2], -1).float()
    inter = (flat @ flat.transpose(-1, -2)).double()  # exact counts below 2**24 pixels
    size = flat.sum(-1, dtype=torch.float64)
    union = size[..., :, None] + size[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def vlc(S: ArrayLike) -> np.ndarray:
    """VLC per image: 100 * mean over i of mean over j != i of (1 - IoU(S_i, S_j)).

    ``S`` (N, K, H, W) bool: the top-5 % masks of an image's K (= 5) top prototypes.
    Returns (N,). Range [0, 100]: 0 = all K masks identical, 100 = pairwise disjoint.
    NaN where K < 2. Empty masks follow :func:`pairwise_iou`.
    """
    s = as_bool(S)
    if s.dim() < 3:
        raise ValueError(f"S must be (..., K, H, W), got {tuple(s.shape)}")
    k = s.shape[-3]
    if k < 2:
        return np.full(s.shape[:-3], np.nan)
    change = 1.0 - pairwise_iou(s)
    off_diagonal = change.sum(dim=(-2, -1)) - change.diagonal(dim1=-2, dim2=-1).sum(-1)
    return to_numpy(100.0 * off_diagonal / (k * (k - 1)))
