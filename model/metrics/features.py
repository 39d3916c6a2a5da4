"""Feature distances (the reference's intra / inter FD): how different the feature vectors
are at which an image's top-k prototypes match best.

Shapes: ``features`` (N, L, D), per image its L candidate feature vectors (ProtoMask: the
M view embeddings; ProtoPNet, ProtoPool: the add-on feature map's h*w locations, row-major;
PIP-Net: its softmax presence vector at each of the h*w locations, as the reference takes
its presence maps for features); ``matched`` (N, P) long, per prototype the candidate of
its best match (the most similar view or location); ``ids`` (N, K) long, the image's top-K
prototypes.

Where the PD metrics (:mod:`model.metrics.prototypes`) compare the prototype vectors, FD
compares what the image supplied to them: two top prototypes that match the same view or
location have distance 0. Both use the same cosine distances (:func:`intra_pd`,
:func:`inter_distance`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from model.metrics.common import ArrayLike, MetricValue, as_tensor
from model.metrics.prototypes import class_unit_sums, inter_distance, intra_pd


def top_k_features(features: ArrayLike, matched: ArrayLike, ids: ArrayLike) -> Tensor:
    """(N, K, D) f_nk = features[n, matched[n, ids[n, k]]]: the feature vector at which the
    image's k-th top prototype matches best."""
    f = as_tensor(features)
    if f.dim() != 3:
        raise ValueError(f"features must be (N, L, D), got {tuple(f.shape)}")
    m = as_tensor(matched, torch.long, device=f.device)
    i = as_tensor(ids, torch.long, device=f.device)
    where = m.gather(1, i)  # (N, K) candidate index
    if where.numel() and (int(where.min()) < 0 or int(where.max()) >= f.shape[1]):
        raise ValueError(f"matched candidates outside 0..{f.shape[1] - 1}")
    return f.gather(1, where[..., None].expand(-1, -1, f.shape[-1]))


def intra_fd(features: ArrayLike, matched: ArrayLike, ids: ArrayLike) -> np.ndarray:
    """Intra FD per image: mean over ordered pairs i != j of its top-K prototypes of
    1 - cos(f_i, f_j), f_k from :func:`top_k_features`.

    Returns (N,), range [0, 2] ([0, 1] for non-negative features: sigmoid add-ons, PIP-Net's
    softmax); 0 when every top prototype matches the same candidate. NaN where K < 2.
    """
    return intra_pd(top_k_features(features, matched, ids))


def inter_fd(
    features: ArrayLike, matched: ArrayLike, ids: ArrayLike, labels: ArrayLike
) -> MetricValue:
    """Inter FD: mean over classes c present in ``labels`` of the mean 1 - cos(a, b) over
    all pairs, a a top-k feature vector (:func:`top_k_features`) of an image of class c, b
    one of an image of another class.

    Range [0, 2]. Absent when fewer than two classes are present. The reference pairs only
    equal top-k positions and averages absent classes as 0 (as its inter PD; README).
    """
    _, sums, counts = class_unit_sums(top_k_features(features, matched, ids), labels)
    return inter_distance(sums, counts, "inter FD")
