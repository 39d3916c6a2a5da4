"""Compactness of the classifier: global size, sparsity, NPR.

Input: the last layer's weight ``W`` of shape (K classes, P prototypes), float — torch's
``nn.Linear(P, K).weight`` layout, i.e. ``PrototypeHead.last_layer.weight``. ``eps`` is the
reference's 1e-3: a weight w is *positive* if w > eps, *negative* if w < -eps, *zero* if
|w| <= eps.
"""

from __future__ import annotations

import torch

from model.metrics.common import Absent, ArrayLike, MetricValue, as_tensor

EPS = 1e-3


def _weights(W: ArrayLike) -> torch.Tensor:
    w = as_tensor(W)
    if w.dim() != 2:
        raise ValueError(f"classifier weight must be (classes, prototypes), got {tuple(w.shape)}")
    return w


def global_size(W: ArrayLike, eps: float = EPS) -> int:
    """Number of prototypes with at least one classifier weight > eps (positive only,
    as the reference: a prototype that only votes against classes does not count).
    Range [0, P]."""
    return int((_weights(W) > eps).any(dim=0).sum())


def sparsity(W: ArrayLike, eps: float = EPS) -> float:
    """100 * share of weights with |w| <= eps. Range [0, 100]."""
    w = _weights(W)
    return float(100.0 * (w.abs() <= eps).double().mean())


def npr(W: ArrayLike, eps: float = EPS) -> MetricValue:
    """Negative-positive reasoning ratio: #(w < -eps) / #(w > eps). Range [0, inf).

    :class:`Absent` when no weight is positive (the ratio is undefined).
    """
    w = _weights(W)
    pos = int((w > eps).sum())
    if pos == 0:
        return Absent(f"NPR undefined: no classifier weight > {eps:g}")
    return int((w < -eps).sum()) / pos
