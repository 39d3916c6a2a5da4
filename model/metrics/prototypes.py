"""Prototype metrics: top-k, intra/inter PD, consistency, stability, PSC/PRC/CRC.

Shapes: ``similarity`` (N, P) float, the prototype similarities of N images (for ProtoMask
the max over views, for ProtoPNet the max over locations); ``ids`` (N, K) long, an image's
top-K prototypes (K = 5); ``vectors`` (N, K, D) float, the prototype vectors of those ids;
``part_hits`` (N, K, Q) bool, visible part q inside S of (image n, its k-th prototype),
from :func:`model.metrics.parts.parts_in_masks`; ``logits`` (N, C).

**Order and ties.** Everything ranks by value descending with ties broken by the lower
index (a stable sort): :func:`top_k_indices`, :func:`ranks_of`. Ranks are **0-based**
(rank 0 = best).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from model.metrics.common import Absent, ArrayLike, MetricValue, as_bool, as_tensor, to_numpy

NO_PARTS = "no ground-truth part keypoints"


# --- order ---------------------------------------------------------------------------------


def top_k_indices(scores: ArrayLike, k: int = 5) -> Tensor:
    """(N, k) long: per row the k highest scores, best first; ties -> lower index first."""
    s = as_tensor(scores)
    return torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :k]


def ranks_of(scores: ArrayLike, ids: ArrayLike) -> Tensor:
    """(N, K) long 0-based rank of prototype / class ``ids[n, i]`` in row n of ``scores``.

    rank = number of entries that come before it: a higher score, or the same score at a
    lower index (consistent with :func:`top_k_indices`).
    """
    s = as_tensor(scores)
    i = as_tensor(ids, torch.long, device=s.device)
    own = s.gather(-1, i)[..., None]  # (N, K, 1)
    index = torch.arange(s.shape[-1], device=s.device)
    before = (s[..., None, :] > own) | ((s[..., None, :] == own) & (index < i[..., None]))
    return before.sum(-1)


# --- prototype-vector diversity -------------------------------------------------------------


def _unit(v: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; a zero vector stays zero (cosine 0 with everything)."""
    norm = v.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, v / norm.clamp(min=1e-300), torch.zeros_like(v))


def intra_pd(vectors: ArrayLike) -> np.ndarray:
    """Intra PD per image: mean over ordered pairs i != j of (1 - cos(v_i, v_j)).

    ``vectors`` (N, K, D). Returns (N,). Range [0, 2] ([0, 1] for non-negative vectors,
    e.g. ProtoMask's sigmoid-space prototypes); orthogonal vectors give 1, identical 0.
    NaN where K < 2. A zero vector has cosine 0 with everything.
    """
    v = _unit(as_tensor(vectors).double())
    k = v.shape[-2]
    if k < 2:
        return np.full(v.shape[:-2], np.nan)
    cos = v @ v.transpose(-1, -2)  # (N, K, K)
    dist = (1.0 - cos).clamp(min=0.0)
    off = dist.sum(dim=(-2, -1)) - dist.diagonal(dim1=-2, dim2=-1).sum(-1)
    return to_numpy(off / (k * (k - 1)))


def class_unit_sums(vectors: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor, Tensor]:
    """Per class present in ``labels``: the sum of its images' top-K unit vectors.

    ``vectors`` (N, K, D), ``labels`` (N,). Returns ``classes`` (C',) long ascending,
    ``sums`` (C', D) float64 with s_c = sum over images n of class c, k of v_nk / |v_nk|
    (a zero vector adds 0), and ``counts`` (C',) float64 = K * images of class c. Sums of
    two batches add (the inter distances of a test split can be gathered batch by batch).
    """
    v = _unit(as_tensor(vectors).double())
    y = as_tensor(labels, torch.long, device=v.device).reshape(-1)
    if y.numel() != v.shape[0]:
        raise ValueError(f"vectors {tuple(v.shape)} and labels ({y.numel()},) disagree")
    classes = torch.unique(y)
    dense = torch.searchsorted(classes, y)
    sums = torch.zeros(classes.numel(), v.shape[-1], dtype=v.dtype, device=v.device)
    sums.index_add_(0, dense, v.sum(-2))
    counts = torch.bincount(dense, minlength=classes.numel()).double() * v.shape[-2]
    return classes, sums, counts


def inter_distance(sums: ArrayLike, counts: ArrayLike, what: str = "inter PD") -> MetricValue:
    """Mean over classes c of the mean (1 - cos) over all pairs (a, b), a a vector of class
    c, b one of another class, from :func:`class_unit_sums`:
    1 - s_c . (S - s_c) / (n_c (n - n_c)), S = sum of s_c, n = sum of n_c.

    Range [0, 2]. Absent (naming ``what``) when fewer than two classes are present.
    """
    s = as_tensor(sums).double()
    n = as_tensor(counts, torch.float64, device=s.device)
    present = n > 0
    if int(present.sum()) < 2:
        return Absent(f"{what} needs at least two classes")
    s, n = s[present], n[present]
    rest_sums, rest_counts = s.sum(0) - s, n.sum() - n
    mean_cos = (s * rest_sums).sum(-1) / (n * rest_counts)
    return float((1.0 - mean_cos).mean())


def inter_pd(vectors: ArrayLike, labels: ArrayLike) -> MetricValue:
    """Inter PD: mean over classes c of the mean (1 - cos) over ALL pairs (a, b), a one of
    the top-K prototype vectors of an image of class c, b one of an image of another class.

    ``vectors`` (N, K, D), ``labels`` (N,) true classes. The mean is over the classes present
    in ``labels``. Range [0, 2]. Absent when fewer than two classes are present.
    Computed from per-class sums of unit vectors (:func:`class_unit_sums`,
    :func:`inter_distance`), O(N K D). Note: the reference pairs only equal top-k
    positions (i-th with i-th); all pairs is what the metric's definition says.
    """
    _, sums, counts = class_unit_sums(vectors, labels)
    return inter_distance(sums, counts)


# --- part-based metrics ---------------------------------------------------------------------


def consistency_per_prototype(
    ids: ArrayLike, part_hits: ArrayLike, num_prototypes: Optional[int] = None
) -> np.ndarray:
    """(P,) per-prototype consistency in [0, 100]; NaN for an inactive prototype.

    Prototype p is *active* when it is in some image's top-K; n_p = number of its top-K
    hits (images); c_pq = number of those hits whose S contains visible part q. Value =
    100 * mean over parts q with c_pq > 0 of c_pq / n_p, and 0 when p never touches a part
    (it still counts, as in the reference).
    """
    i = as_tensor(ids, torch.long).reshape(-1)
    hits = as_bool(part_hits, device=i.device)
    q = hits.shape[-1]
    hits = hits.reshape(-1, q).double()
    if i.numel() != hits.shape[0]:
        raise ValueError("ids (N, K) and part_hits (N, K, Q) disagree")
    p = int(num_prototypes) if num_prototypes is not None else int(i.max()) + 1 if i.numel() else 0
    n = torch.bincount(i, minlength=p).double()  # (P,)
    c = torch.zeros(p, q, dtype=torch.float64, device=i.device).index_add_(0, i, hits)
    touched = c > 0
    share = torch.where(touched, c / n.clamp(min=1)[:, None], torch.zeros_like(c))
    value = 100.0 * share.sum(1) / touched.sum(1).clamp(min=1)
    return to_numpy(torch.where(n > 0, value, torch.full_like(value, float("nan"))))


def consistency(
    ids: ArrayLike, part_hits: Optional[ArrayLike], num_prototypes: Optional[int] = None
) -> MetricValue:
    """Consistency = 100 * mean over active p of mean over {q: c_pq > 0} of c_pq / n_p.

    See :func:`consistency_per_prototype`. Range [0, 100]. ``part_hits`` None -> Absent;
    no hits at all -> Absent. Pass only images that have keypoints.
    """
    if part_hits is None:
        return Absent(NO_PARTS)
    per = consistency_per_prototype(ids, part_hits, num_prototypes)
    per = per[~np.isnan(per)]
    return float(per.mean()) if per.size else Absent("no active prototype")


def stability(
    part_hits: Optional[ArrayLike],
    part_hits_perturbed: Optional[ArrayLike],
    empty_value: float = 100.0,
) -> np.ndarray | Absent:
    """Per (image, prototype): 100 * (1 - |A symmetric-difference B| / |A union B|).

    A = the parts inside S, B = the parts inside S' for the SAME prototype on the perturbed
    copy, both (N, K, Q) bool. Range [0, 100]. When neither S nor S' contains a part
    (empty union) the value is ``empty_value``: 100 by default (nothing changed); pass NaN
    for the reference's behaviour (such pairs are left out of the mean). Returns (N, K).
    None -> Absent.
    """
    if part_hits is None or part_hits_perturbed is None:
        return Absent(NO_PARTS)
    a = as_bool(part_hits)
    b = as_bool(part_hits_perturbed, device=a.device)
    union = (a | b).sum(-1, dtype=torch.float64)
    changed = (a ^ b).sum(-1, dtype=torch.float64)
    value = 100.0 * (1.0 - changed / union.clamp(min=1))
    return to_numpy(torch.where(union > 0, value, torch.full_like(value, float(empty_value))))


# --- perturbation continuity ----------------------------------------------------------------


def psc(
    similarity: ArrayLike,
    similarity_perturbed: ArrayLike,
    ids: Optional[ArrayLike] = None,
    k: int = 5,
) -> np.ndarray:
    """Prototype similarity change per (image, top-k prototype): 100 * |s' - s| / |s|.

    ``ids`` default: :func:`top_k_indices` of ``similarity``. Returns (N, K), range
    [0, inf) (100 = the similarity changed by its own size). NaN where s = 0.
    """
    s = as_tensor(similarity).double()
    s2 = as_tensor(similarity_perturbed, torch.float64, device=s.device)
    i = top_k_indices(s, k) if ids is None else as_tensor(ids, torch.long, device=s.device)
    a, b = s.gather(-1, i), s2.gather(-1, i)
    value = 100.0 * (b - a).abs() / a.abs().clamp(min=1e-300)
    return to_numpy(torch.where(a != 0, value, torch.full_like(value, float("nan"))))


def prc(
    similarity: ArrayLike,
    similarity_perturbed: ArrayLike,
    ids: Optional[ArrayLike] = None,
    k: int = 5,
) -> np.ndarray:
    """Prototype rank change per (image, top-k prototype): |rank' - rank|, 0-based ranks
    among all P prototypes (:func:`ranks_of`). Returns (N, K), range [0, P - 1]; 0 = same
    place."""
    s = as_tensor(similarity)
    s2 = as_tensor(similarity_perturbed, device=s.device)
    i = top_k_indices(s, k) if ids is None else as_tensor(ids, torch.long, device=s.device)
    return to_numpy((ranks_of(s2, i) - ranks_of(s, i)).abs())


def crc(logits: ArrayLike, logits_perturbed: ArrayLike) -> np.ndarray:
    """Class rank change per image: the 0-based rank, in the perturbed logits, of the
    original top-1 class (ties -> lower index). Returns (N,), range [0, C - 1]; 0 = the
    prediction did not change."""
    z = as_tensor(logits)
    z2 = as_tensor(logits_perturbed, device=z.device)
    top1 = top_k_indices(z, 1)
    return to_numpy(ranks_of(z2, top1)[..., 0])
