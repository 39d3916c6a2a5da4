"""Each prototype's contribution to each class, read from the model's own classification
layer (ProtoPNet's local analysis: similarity x last-layer weight).

A *unit* is one input of the classification layer:

* ProtoMask, ProtoPNet (:class:`model.head.PrototypeHead`): prototype p, its score the
  similarity log((d_min + 1) / (d_min + eps)), its weights ``last_layer.weight[:, p]``;
* ProtoPool (:class:`model.protopool.ProtoPoolHead`): class slot k*S + s, filled by pool
  prototype ``assignment()[k, s]`` under the hard assignment of evaluation, its score the
  slot similarity (focal: g(d_min) - g(d_avg) of that prototype), its weights
  ``last_layer.weight[:, k*S + s]``;
* PIP-Net (:class:`model.presence_saliency.PresenceNetwork`): prototype p, its score the
  pooled presence as the classifier reads it (zeroed below 0.1), its weights the
  non-negative relu(W[:, p]) (plus the classifier's bias, if any).

The logit of class c is sum over units u of score[u] * weight[c, u] (+ bias[c]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from model.pipnet import WEIGHT_SHRINK
from model.protopool import slot_similarities
from pipeline.model_inputs import model_kind


@dataclass(frozen=True)
class Evidence:
    """The classification layer's inputs for a batch, and its weights."""

    unit_prototypes: Tensor  # (U,) long: the prototype of each unit
    scores: Tensor  # (B, U) each unit's score as the layer reads it
    weights: Tensor  # (K, U) the layer's weights
    bias: Optional[Tensor]  # (K,) or None
    unit_name: str  # "prototype" or "slot"

    def contributions(self) -> Tensor:
        """(B, K, U): score x weight of every unit for every class."""
        return self.scores[:, None, :] * self.weights[None]

    def logits(self) -> Tensor:
        """(B, K): the sum of the contributions (plus the bias): the model's logits."""
        total = self.contributions().sum(-1)
        return total if self.bias is None else total + self.bias


@torch.no_grad()
def class_evidence(kind: str, model: nn.Module, out: Any) -> Evidence:
    """The evidence of a forward output ``out`` of ``model`` (as the evaluate stage
    explains it: :func:`model.model_kinds.explained_model`) of kind ``kind``."""
    head = model.head
    if model_kind(kind).presence:
        classifier = head.classifier
        _, pooled, _ = model.net.head(out.maps, inference=True)  # the classifier's input
        bias = None if classifier.bias is None else classifier.bias.detach().float()
        units = torch.arange(pooled.shape[1], device=pooled.device)
        return Evidence(units, pooled.float(), head.prototype_weights().float(), bias, "prototype")
    weights = head.last_layer.weight.detach().float()
    if hasattr(head, "slots"):  # ProtoPool
        d = out.distances.float().flatten(2)
        scores = slot_similarities(
            out.min_distances.float(),
            d.mean(dim=2) if head.focal else None,
            head.presence(hard=True).float(),
            epsilon=head.epsilon,
            mix_distances=head.mix_distances,
        ).flatten(1)
        return Evidence(head.assignment().flatten(), scores, weights, None, "slot")
    scores = head.similarity(out.min_distances.float())
    units = torch.arange(scores.shape[1], device=scores.device)
    return Evidence(units, scores, weights, None, "prototype")


@dataclass(frozen=True)
class Contribution:
    """One unit's part of a class's logit."""

    unit: int
    prototype: int
    score: float
    weight: float
    contribution: float


def top_contributions(evidence: Evidence, row: int, cls: int, count: int) -> list[Contribution]:
    """The ``count`` units with the largest contribution to class ``cls`` in batch row
    ``row`` (ties by unit index)."""
    values = evidence.contributions()[row, cls].cpu()
    order = sorted(range(len(values)), key=lambda u: (-float(values[u]), u))[:count]
    return [
        Contribution(
            u,
            int(evidence.unit_prototypes[u]),
            float(evidence.scores[row, u]),
            float(evidence.weights[cls, u]),
            float(values[u]),
        )
        for u in order
    ]


def runner_up(logits: Tensor) -> tuple[int, int]:
    """(predicted class, runner-up class) of one image's logits (K,), ties by index."""
    order = sorted(range(len(logits)), key=lambda c: (-float(logits[c]), c))
    return order[0], order[1]


def own_units(model: nn.Module, evidence: Evidence) -> list[list[int]]:
    """Per class, the units of its classification layer: the prototypes (ProtoMask,
    ProtoPNet) or slots (ProtoPool) the layer assigns to it, or for PIP-Net the prototypes
    with a weight above 1e-3 to it, largest weight first."""
    identity = getattr(model.head, "prototype_class_identity", None)
    if identity is not None:  # (U, K) one-hot: unit -> its class
        classes = identity.argmax(dim=1).tolist()
        return [[u for u, c in enumerate(classes) if c == k] for k in range(identity.shape[1])]
    w = evidence.weights.cpu()
    return [
        sorted(
            (u for u in range(w.shape[1]) if w[k, u] > WEIGHT_SHRINK), key=lambda u: (-w[k, u], u)
        )
        for k in range(w.shape[0])
    ]
