"""What the evaluate stage does differently per model kind, read from the one table
:data:`pipeline.model_inputs.KINDS` (full image or views, native map, push):

* :func:`explained_model`: the network with the interface the stage explains (``trunk``,
  ``add_on``, ``head`` with ``prototypes``, ``num_prototypes``, ``prototype_classes``,
  ``similarity``; a forward on images alone): the network itself, or PIP-Net wrapped in
  :class:`model.presence_saliency.PresenceNetwork`;
* :func:`make_explainer`: the saliency model of a prototype's score
  (:class:`model.saliency.PrototypeSimilarity` or
  :class:`model.presence_saliency.PresenceExplainer`);
* :func:`similarities`, :func:`native_maps`, :func:`upsampled_native`,
  :func:`recompute_native`: the per-image prototype scores and the native maps (the
  second method ``upsampled``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from model.presence_saliency import PresenceExplainer, PresenceNetwork, upsampled_presence
from model.saliency import PrototypeSimilarity, upsampled_similarity
from pipeline.model_inputs import KINDS, ModelKind, model_kind

__all__ = [
    "KINDS",
    "ModelKind",
    "explained_model",
    "make_explainer",
    "model_kind",
    "native_maps",
    "recompute_native",
    "similarities",
    "upsampled_native",
]


def explained_model(model: nn.Module, kind: str) -> nn.Module:
    """``model`` (as :func:`model.loading.load_model` returns it) with the interface the
    evaluate stage explains; PIP-Net is wrapped, sharing its modules."""
    if model_kind(kind).presence and not isinstance(model, PresenceNetwork):
        return PresenceNetwork(model)
    return model


def make_explainer(kind: str, trunk: nn.Module, add_on: nn.Module) -> nn.Module:
    """The saliency model of kind ``kind`` over ``trunk`` and ``add_on``: the presence of a
    PIP-Net prototype, or the similarity of a prototype vector (pooled for ProtoMask's
    view embeddings, best location of the map otherwise)."""
    spec = model_kind(kind)
    if spec.presence:
        return PresenceExplainer(trunk, add_on)
    return PrototypeSimilarity(trunk, add_on, pooled=not spec.full_image)


def similarities(kind: str, head: nn.Module, out: Any) -> Tensor:
    """(B, P) per-image prototype scores of a forward output: the pooled presence
    (PIP-Net) or the similarity of the minimum distance."""
    if model_kind(kind).presence:
        return out.pooled
    return head.similarity(out.min_distances)


def native_maps(kind: str, out: Any) -> Tensor:
    """(B, P, h, w) the maps of the native method: distances (similarity kinds, turned
    into similarities by :func:`upsampled_native`) or presence."""
    return out.maps if model_kind(kind).presence else out.distances


def upsampled_native(kind: str, maps: Tensor, height: int, width: int) -> Tensor:
    """The native explanation (N, height, width) of native maps (N, h, w)."""
    if model_kind(kind).presence:
        return upsampled_presence(maps, height, width)
    return upsampled_similarity(maps, height, width)


@torch.no_grad()
def recompute_native(kind: str, model: nn.Module, inputs: Tensor, prototypes: Tensor) -> Tensor:
    """Native maps (N, h, w) of row i's prototype (``prototypes`` (N, D): vectors, or
    one-hot rows for PIP-Net) on ``inputs`` (N, 3, H, W): what :func:`native_maps` holds,
    for another copy of the model (the randomisation check)."""
    t = prototypes.reshape(*prototypes.shape, 1, 1)
    if model_kind(kind).presence:
        return (model.presence_maps(inputs) * t.to(torch.float32)).sum(1)
    f = model.features(inputs)
    return ((f - t.to(f.dtype)) ** 2).sum(1)
