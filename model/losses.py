"""Training losses of ProtoMask and the ProtoPNet baseline.

total = ce * CE_w + cluster * Clst - separation * Sep + diversity * Div + l1 * L1

* CE_w: cross-entropy with class weights w_c = N / (C * n_c) from the training label
  counts (torch's weighted mean: divided by the summed weights of the batch's labels).
* Clst: mean over the batch of the minimum distance to a prototype of the label's class.
* Sep: mean over the batch of the minimum distance to a prototype of another class.
* Div: mean over the batch of exp(-0.001 * S_y), S_y the sum over ordered pairs i != j of
  the L2 distances between the prototypes of the label's class (as the reference sums the
  full N x N matrix), computed WITH gradient (the reference's was a Python float).
* L1: absolute sum of the last-layer weights from prototypes to other classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from model.head import ProtoOutput, PrototypeHead

DIVERSITY_SCALE = 0.001


@dataclass(frozen=True)
class LossWeights:
    """Coefficients of the loss terms (the reference defaults)."""

    cross_entropy: float = 1.0
    cluster: float = 0.8
    separation: float = 0.2
    diversity: float = 0.2
    l1: float = 1e-3

    def for_period(self, period: str) -> LossWeights:
        """The reference's terms per period: warmup/joint without L1; last_layer CE + L1 only."""
        if period in ("warmup", "joint"):
            return replace(self, l1=0.0)
        if period == "last_layer":
            return replace(self, cluster=0.0, separation=0.0, diversity=0.0)
        raise ValueError(f"unknown period {period!r} (warmup | joint | last_layer)")


def class_weights(labels: Tensor | Sequence[int], num_classes: int) -> Tensor:
    """w_c = N / (C * n_c) from the training labels; 0 for a class with no example."""
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    counts = torch.bincount(labels, minlength=num_classes).double()
    if len(counts) > num_classes:
        raise ValueError(f"label {int(labels.max())} out of range for {num_classes} classes")
    weights = torch.where(
        counts > 0, len(labels) / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts)
    )
    return weights.float()


def _own_mask(labels: Tensor, head: PrototypeHead) -> Tensor:
    """(B, P) bool: prototype p belongs to the class of sample b."""
    return head.prototype_classes[None, :] == labels[:, None]


def cluster_cost(min_distances: Tensor, labels: Tensor, head: PrototypeHead) -> Tensor:
    """Mean over the batch of the min distance to an own-class prototype."""
    own = _own_mask(labels, head)
    return min_distances.masked_fill(~own, float("inf")).amin(dim=1).mean()


def separation_cost(min_distances: Tensor, labels: Tensor, head: PrototypeHead) -> Tensor:
    """Mean over the batch of the min distance to an other-class prototype (subtract it)."""
    own = _own_mask(labels, head)
    return min_distances.masked_fill(own, float("inf")).amin(dim=1).mean()


def diversity_loss(labels: Tensor, head: PrototypeHead) -> Tensor:
    """Mean over the batch of exp(-0.001 * sum_{i != j} ||p_i - p_j||), own-class pairs.

    Differentiable; coinciding prototypes (e.g. two pushed onto one view) get zero gradient
    from their pair instead of NaN.
    """
    table = head.class_prototype_table()[labels]  # (B, Q)
    valid = table >= 0
    protos = head.prototypes[table.clamp_min(0)].float()  # (B, Q, D)
    diff = protos[:, :, None, :] - protos[:, None, :, :]  # (B, Q, Q, D)
    sq = (diff * diff).sum(-1)
    pair = valid[:, :, None] & valid[:, None, :]
    dist = torch.where(sq > 0, sq.clamp_min(1e-30).sqrt(), torch.zeros_like(sq)) * pair
    return torch.exp(-DIVERSITY_SCALE * dist.sum(dim=(1, 2))).mean()


def l1_wrong_class(head: PrototypeHead) -> Tensor:
    """L1 norm of the last-layer weights that connect prototypes to other classes."""
    return (head.last_layer.weight * (1 - head.prototype_class_identity.t())).abs().sum()


def cross_entropy(logits: Tensor, labels: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """(Class-weighted) cross-entropy, torch's weighted-mean reduction."""
    if weights is not None:
        weights = weights.to(device=logits.device, dtype=torch.float32)
    return F.cross_entropy(logits.float(), labels, weight=weights)


def prototype_loss(
    output: ProtoOutput,
    labels: Tensor,
    head: PrototypeHead,
    weights: LossWeights = LossWeights(),
    class_weight: Optional[Tensor] = None,
) -> tuple[Tensor, dict[str, float]]:
    """The weighted total and its parts as floats (one device sync) for logging.

    Terms whose coefficient is 0 are still reported (cheap), but only as logged values;
    the total holds them with weight 0, so they add no gradient.
    """
    parts = {
        "cross_entropy": cross_entropy(output.logits, labels, class_weight),
        "cluster": cluster_cost(output.min_distances, labels, head),
        "separation": separation_cost(output.min_distances, labels, head),
        "diversity": diversity_loss(labels, head),
        "l1": l1_wrong_class(head),
    }
    total = (
        weights.cross_entropy * parts["cross_entropy"]
        + weights.cluster * parts["cluster"]
        - weights.separation * parts["separation"]
        + weights.diversity * parts["diversity"]
        + weights.l1 * parts["l1"]
    )
    values = torch.stack([total.detach()] + [v.detach().float() for v in parts.values()]).tolist()
    return total, dict(zip(["total", *parts], values, strict=False))
