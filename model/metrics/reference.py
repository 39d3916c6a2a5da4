"""The rest of the reference's (uos-sis/quanproto) metric set: IoU, OIRR, object boxes,
explanation boxes, map and activation changes, PLC, local size, entropy.

Shapes and value convention as in :mod:`model.metrics.saliency` (maps (..., H, W) on the
image canvas, per-item float64 numpy with NaN where undefined, Absent without ground
truth). "Activation maps" are the prototypes' own similarity maps (the reference's
``similarity_maps``): ProtoPNet / ProtoPool similarity log((d + 1) / (d + eps)) per
feature-map location, PIP-Net's presence, ProtoMask's similarity per view as an (M, 1) map.

Where the reference has a bug the intended definition is implemented (README: Metrics):

* OIRR: its epsilon guard is a no-op (``torch.where`` result discarded) and an empty
  inside gives inf, which makes the whole mean inf; here such a map is NaN (left out).
* PLC: it unravels the argmax with the map's height for both coordinates (right only
  for square maps); here row = i // W, col = i % W.
* entropy: it clamps the entropy in bits at 1 although 10 bins reach log2(10); here the
  entropy is normalised by log2(bins) (``reference_compatible=True`` gives its clamp).
* changes (VLC, PALC): two empty masks give 0/0 = NaN there (poisoning the mean); here
  they are identical (change 0).
* CAC: on raw logits (negative for ProtoPNet-style classifiers) 1 - sum min / sum max is
  unbounded; the evaluate stage passes softmax probabilities (model.scalars).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from model.metrics.common import Absent, ArrayLike, as_bool, as_tensor, to_numpy
from model.metrics.saliency import NO_SEGMENTATION, _align, _count, _maps, _nan_where

NO_BOX = "no ground-truth object box"
LOCAL_SIZE_THRESHOLD = 0.1
ENTROPY_BINS = 10


def box_mask(box_xywh: Optional[ArrayLike], height: int, width: int) -> Optional[np.ndarray]:
    """The object box as an (H, W) bool mask, or None without a box (None or NaN).

    ``box_xywh`` is the images index's x, y, width, height (0-based top-left pixel, pixels
    covered): columns floor(x + 0.5) .. floor(x + w + 0.5) - 1, rows likewise, clipped to
    the image; at least one pixel when w, h > 0.
    """
    if box_xywh is None:
        return None
    x, y, w, h = (float(v) for v in np.asarray(box_xywh, np.float64).ravel())
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    c0, r0 = math.floor(x + 0.5), math.floor(y + 0.5)
    c1, r1 = max(c0 + 1, math.floor(x + w + 0.5)), max(r0 + 1, math.floor(y + h + 0.5))
    mask = np.zeros((height, width), bool)
    mask[max(r0, 0) : min(r1, height), max(c0, 0) : min(c1, width)] = True
    return mask


def mask_iou(S: ArrayLike, G: Optional[ArrayLike], reason: str = NO_SEGMENTATION):
    """IoU of S with the object: 100 * |S and G| / |S or G| per map. Range [0, 100].

    The reference's ``mask_intersection_over_union`` (its "IOU"). NaN where S is empty or
    G is empty (the reference gives 0 only when both are). None G -> Absent(``reason``).
    """
    if G is None:
        return Absent(reason)
    s = as_bool(S)
    g = _align(G, s)
    inter, union = _count(s & g), _count(s | g)
    undefined = (_count(s) == 0) | (_count(g).expand(s.shape[:-2]) == 0)
    return _nan_where(100.0 * inter / union.clamp(min=1), undefined)


def oirr(saliency: ArrayLike, G: Optional[ArrayLike], S: ArrayLike):
    """Outside-inside relevance ratio per map: mean R over S outside G / mean R over S in G.

    R = saliency restricted to S (positive on S, as S keeps positive pixels only), so the
    reference's "non-zero pixels of R" are S. Range [0, inf), lower = relevance inside
    the object. 0 when all of S is inside G; NaN where S has no pixel in G (the
    reference's inf), S is empty or G is empty. None G -> Absent.
    """
    if G is None:
        return Absent(NO_SEGMENTATION)
    s = _maps(saliency).double()
    mask = as_bool(S, device=s.device)
    g = _align(G, s)
    r = s * mask
    inside, outside = mask & g, mask & ~g
    n_in, n_out = _count(inside), _count(outside)
    mean_in = (r * inside).sum(dim=(-2, -1)) / n_in.clamp(min=1)
    mean_out = (r * outside).sum(dim=(-2, -1)) / n_out.clamp(min=1)
    undefined = (n_in == 0) | (mean_in <= 0) | (_count(g).expand(s.shape[:-2]) == 0)
    return _nan_where(mean_out / torch.where(undefined, 1.0, mean_in), undefined)


def bounding_box_fill(S: ArrayLike) -> Tensor:
    """Each mask of S (..., H, W) replaced by its bounding box (inclusive, filled); an
    empty mask stays empty. The reference's ``use_bbox`` explanation boxes."""
    s = as_bool(S)
    rows, cols = s.any(dim=-1), s.any(dim=-2)  # (..., H), (..., W)

    def span(a: Tensor) -> Tensor:
        n = a.shape[-1]
        idx = torch.arange(n, device=a.device)
        first = torch.where(a, idx, n).amin(dim=-1, keepdim=True)
        last = torch.where(a, idx, -1).amax(dim=-1, keepdim=True)
        return (idx >= first) & (idx <= last)

    return span(rows)[..., :, None] & span(cols)[..., None, :]


def min_max_mask(maps: ArrayLike, threshold: float = 0.5) -> Tensor:
    """The reference's activation mask: (a - min) / (max - min) > threshold per map
    (..., h, w); a constant map gives an empty mask."""
    a = as_tensor(maps).double()
    lo = a.amin(dim=(-2, -1), keepdim=True)
    hi = a.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return (span > 0) & ((a - lo) / span.clamp(min=1e-300) > threshold)


def mask_change(S: ArrayLike, S2: ArrayLike) -> np.ndarray:
    """100 * (1 - IoU(S, S2)) per pair of masks (..., H, W). Range [0, 100]; two empty
    masks count as identical (0). The reference's ``mask_location_change`` (VLC of
    continuity on S, PALC on :func:`min_max_mask`)."""
    a = as_bool(S)
    b = as_bool(S2, device=a.device)
    inter, union = _count(a & b), _count(a | b)
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return to_numpy(100.0 * (1.0 - iou))


def activation_change(a: ArrayLike, b: ArrayLike, dims: int = 2) -> np.ndarray:
    """100 * (1 - sum_i min(a_(i), b_(i)) / sum_i max(a_(i), b_(i))) per item.

    a_(i), b_(i): the values of the last ``dims`` dimensions sorted in descending order
    (so only the value distributions are compared, not where they are). The reference's
    ``activation_change`` (VAC on R, PAC on activation maps) and, with ``dims=1`` on logits,
    ``classification_activation_change`` (CAC). Range [0, 100] for non-negative inputs
    (logits may be negative: the ratio is then not bounded, as in the reference). NaN
    where the sum of maxima is 0.
    """
    x = as_tensor(a).double().flatten(-dims)
    y = as_tensor(b, torch.float64, device=x.device).flatten(-dims)
    x = x.sort(dim=-1, descending=True).values
    y = y.sort(dim=-1, descending=True).values
    inter, union = torch.minimum(x, y).sum(-1), torch.maximum(x, y).sum(-1)
    value = 100.0 * (1.0 - inter / torch.where(union == 0, 1.0, union))
    return _nan_where(value, union == 0)


def _argmax_rc(maps: Tensor) -> Tensor:
    """(..., 2) row, col of the first maximum of each map (..., h, w)."""
    w = maps.shape[-1]
    i = maps.flatten(-2).argmax(dim=-1)
    return torch.stack([i // w, i % w], dim=-1)


def location_change(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """PLC per pair of maps (..., h, w): Manhattan distance |dr| + |dc| between the
    locations of their maxima (first in row-major order on ties), in map cells. Range
    [0, h + w - 2]."""
    x = as_tensor(a)
    y = as_tensor(b, device=x.device)
    return to_numpy((_argmax_rc(x) - _argmax_rc(y)).abs().sum(-1))


def _off_diagonal_mean(pair: Tensor) -> np.ndarray:
    """(N,) mean over i != j of a (N, K, K) pair matrix; NaN where K < 2."""
    k = pair.shape[-1]
    if k < 2:
        return np.full(pair.shape[:-2], np.nan)
    off = pair.sum(dim=(-2, -1)) - pair.diagonal(dim1=-2, dim2=-1).sum(-1)
    return to_numpy(off / (k * (k - 1)))


def intra_location_change(maps: ArrayLike) -> np.ndarray:
    """Contrastivity PLC per image: mean over ordered pairs i != j of an image's K
    activation maps (N, K, h, w) of the Manhattan distance between their maxima."""
    rc = _argmax_rc(as_tensor(maps)).double()  # (N, K, 2)
    return _off_diagonal_mean((rc[..., :, None, :] - rc[..., None, :, :]).abs().sum(-1))


def intra_activation_change(R: ArrayLike) -> np.ndarray:
    """Contrastivity VAC per image: mean over ordered pairs i != j of
    :func:`activation_change` between an image's K maps (N, K, H, W); NaN where K < 2 or
    a pair's maxima sum to 0 (the reference asserts instead)."""
    r = as_tensor(R).double()
    v = r.flatten(-2).sort(dim=-1, descending=True).values  # (N, K, L)
    inter = torch.minimum(v[..., :, None, :], v[..., None, :, :]).sum(-1)
    union = torch.maximum(v[..., :, None, :], v[..., None, :, :]).sum(-1)
    change = 100.0 * (1.0 - inter / torch.where(union == 0, 1.0, union))
    change = torch.where(union == 0, torch.full_like(change, float("nan")), change)
    return _off_diagonal_mean(change)


def local_size(similarity: ArrayLike, threshold: float = LOCAL_SIZE_THRESHOLD) -> np.ndarray:
    """Local explanation size per image: #{p : s_p / max_p s_p > threshold}.

    ``similarity`` (N, P). Range [0, P] (>= 1 when the maximum is positive). NaN where an
    image's maximum is <= 0 (the ratio is meaningless; the reference counts 0).
    """
    s = as_tensor(similarity).double()
    peak = s.amax(dim=-1, keepdim=True)
    count = (s / peak.clamp(min=1e-300) > threshold).sum(-1).double()
    return _nan_where(count, peak[..., 0] <= 0)


def activation_entropy(
    similarity: ArrayLike,
    ids: Optional[ArrayLike] = None,
    bins: int = ENTROPY_BINS,
    reference_compatible: bool = False,
) -> np.ndarray:
    """Per prototype: normalised entropy of its similarity distribution over the images.

    ``similarity`` (N, P). For prototype p: x_n = s_np / max_n s_np, a histogram of x over
    ``bins`` equal bins of [0, 1] (values outside are dropped), shares p_b (shares below
    0.001 set to 0, as the reference), H_p = -sum_b p_b log2 p_b / log2(bins), in [0, 1]:
    0 = always the same activation level, 1 = every level equally often. Returns (P,);
    NaN for a prototype whose maximum is <= 0 and, with ``ids`` ((N, K) top-k ids), for a
    prototype never in a top-k (the reference averages over those used). With
    ``reference_compatible`` the entropy in bits clamped at 1 (the reference's numbers).
    """
    s = as_tensor(similarity).double()
    peak = s.amax(dim=0)
    x = s / peak.clamp(min=1e-300)
    inside = (x >= 0) & (x <= 1)
    b = (x * bins).floor().clamp(max=bins - 1).long().clamp(min=0)
    hist = torch.zeros(bins, s.shape[1], dtype=torch.float64, device=s.device)
    hist.scatter_add_(0, b, inside.double())
    p = hist / hist.sum(0).clamp(min=1)
    p = torch.where(p < 0.001, torch.zeros_like(p), p)
    bits = -(p * torch.log2(torch.where(p > 0, p, 1.0))).sum(0)
    h = bits.clamp(0, 1) if reference_compatible else bits / math.log2(bins)
    undefined = peak <= 0
    if ids is not None:
        used = torch.zeros(s.shape[1], dtype=torch.bool, device=s.device)
        used[as_tensor(ids, torch.long, device=s.device).reshape(-1)] = True
        undefined |= ~used
    return _nan_where(h, undefined)
