"""ProtoPool's training loss (Rymarczyk et al., ECCV 2022), as its original code computes it.

total = CE * ce + Clst * cluster - Sep * separation + Orth * orthogonality + L1 * l1

With A the presence (K, S, P) of the forward (``model.head.last_presence``: the Gumbel
sample in training), d (B, P) the per-prototype minimum distances, D the prototype depth:

* ce: cross-entropy of the logits (optionally class-weighted, torch's weighted mean).
* cluster: a_b[p] = sum_s A[y_b, s, p] (no gradient); T_b the S prototypes of largest
  a_b; cluster = mean_b (D - max_p (D - d[b, p]) [p in T_b]), i.e. the minimum of d over
  T_b (capped at D while some prototype lies outside T_b).
* separation: the same with a_b[p] = sum_s (1 - A[y_b, s, p]) and the P - S largest:
  the minimum distance to the prototypes the label's class uses least (subtracted).
* orthogonality on the raw slot logits R (K, S, P): c_kij = cos(R[k, i], R[k, j]);
  ``all`` (the original): sum_{k,i,j} c_kij / (K S) - 1 (= the off-diagonal sum / (K S));
  ``adjacent`` (quanproto): sum_{k,i} c_{k,i,i+1} / (K S).
* l1: sum |W[j, k*S + s]| over the last-layer weights from slots of class k != j.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.head import ProtoOutput, unwrap_model
from model.losses import cross_entropy, l1_wrong_class


@dataclass(frozen=True)
class ProtoPoolLossWeights:
    """Coefficients (gmum/ProtoPool main.py CUB: clst 0.8, sep 0.08, orth 1, l1 1e-4;
    uos-sis/quanproto: the same but l1 1e-3, only in fine-tuning, ``adjacent`` pairs)."""

    cross_entropy: float = 1.0
    cluster: float = 0.8
    separation: float = 0.08
    orthogonality: float = 1.0
    l1: float = 1e-4
    orthogonality_pairs: str = "all"

    def for_period(self, period: str) -> ProtoPoolLossWeights:
        """warmup/joint: no L1 (the last layer is not trained); last_layer: CE + L1 only."""
        if period in ("warmup", "joint"):
            return replace(self, l1=0.0)
        if period == "last_layer":
            return replace(self, cluster=0.0, separation=0.0, orthogonality=0.0)
        raise ValueError(f"unknown period {period!r} (warmup | joint | last_layer)")


def top_k_min_distance(min_distances: Tensor, scores: Tensor, k: int, max_dist: float) -> Tensor:
    """mean_b (D - max_p (D - d[b, p]) m[b, p]), m the top-k of ``scores`` (B, P) per row."""
    idx = torch.topk(scores.detach(), k, dim=1).indices
    mask = torch.zeros_like(min_distances).scatter_(1, idx, 1.0)
    inverted = ((max_dist - min_distances) * mask).amax(dim=1)
    return (max_dist - inverted).mean()


def cluster_cost(min_distances: Tensor, labels: Tensor, presence: Tensor, dim: int) -> Tensor:
    """Min distance to the S prototypes most present in the label's slots (batch mean)."""
    own = presence[labels]  # (B, S, P)
    return top_k_min_distance(min_distances, own.sum(dim=1), own.shape[1], float(dim))


def separation_cost(min_distances: Tensor, labels: Tensor, presence: Tensor, dim: int) -> Tensor:
    """Min distance to the P - S prototypes least present in the label's slots."""
    other = 1 - presence[labels]  # (B, S, P)
    k = other.shape[2] - other.shape[1]
    return top_k_min_distance(min_distances, other.sum(dim=1), k, float(dim))


def orthogonality_loss(slots: Tensor, pairs: str = "all") -> Tensor:
    """Cosine similarity of the slot logits (K, S, P) within each class (module doc)."""
    k, s, _ = slots.shape
    if pairs == "all":
        unit = F.normalize(slots, dim=2, eps=1e-8)
        return (unit @ unit.transpose(1, 2)).sum() / (k * s) - 1
    if pairs == "adjacent":
        return F.cosine_similarity(slots[:, :-1], slots[:, 1:], dim=2).sum() / (k * s)
    raise ValueError(f"unknown orthogonality pairs {pairs!r} (all | adjacent)")


def protopool_loss(
    output: ProtoOutput,
    labels: Tensor,
    model: nn.Module,
    weights: ProtoPoolLossWeights = ProtoPoolLossWeights(),
    class_weight: Optional[Tensor] = None,
) -> tuple[Tensor, dict[str, float]]:
    """The weighted total and its parts as floats (one device sync) for logging.

    ``model`` is the ProtoPool network (DDP / compile wrappers are unwrapped); the presence
    is the one its last forward used. Terms with coefficient 0 are reported but add no
    gradient.
    """
    head = unwrap_model(model).head
    presence = head.last_presence
    if presence is None:
        raise ValueError("protopool_loss needs the presence of a forward pass (none yet)")
    d = output.min_distances.float()
    parts = {
        "cross_entropy": cross_entropy(output.logits, labels, class_weight),
        "cluster": cluster_cost(d, labels, presence, head.dim),
        "separation": separation_cost(d, labels, presence, head.dim),
        "orthogonality": orthogonality_loss(head.slots, weights.orthogonality_pairs),
        "l1": l1_wrong_class(head),  # type: ignore[arg-type]
    }
    total = (
        weights.cross_entropy * parts["cross_entropy"]
        + weights.cluster * parts["cluster"]
        - weights.separation * parts["separation"]
        + weights.orthogonality * parts["orthogonality"]
        + weights.l1 * parts["l1"]
    )
    values = torch.stack([total.detach()] + [v.detach().float() for v in parts.values()]).tolist()
    return total, dict(zip(["total", *parts], values, strict=False))
