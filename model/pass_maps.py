"""The maps of the evaluate pass (:mod:`model.explain_pass`, :mod:`model.completeness_pass`):
a prototype's input-level saliency put on its image's canvas, and the prototypes' own
activation maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from model.saliency import paste_back, resize_maps

if TYPE_CHECKING:
    from model.explain_pass import EvalRun


def saliency_canvas(run: EvalRun, i: int, maps: Tensor, matched: Optional[Tensor]) -> Tensor:
    """(K, H, W) the saliency (K, h, w) of test row ``i``'s prototypes on the image canvas:
    ProtoMask's map of the view each prototype matched (``matched`` (K,)) pasted into its
    box, a full-image model's map resized to the image."""
    h, w = (int(v) for v in run.test.sizes[i])
    if run.spec.full_image:
        return resize_maps(maps, h, w)
    boxes = torch.as_tensor(run.test.boxes[i])
    return paste_back(maps, boxes[matched.cpu()], h, w)


def prototype_activation(run: EvalRun, out: Any, ids: Tensor) -> Tensor:
    """(B, K, h, w) the activation maps of the prototypes ``ids`` (B, K) in a forward
    output: the similarity per location (ProtoPNet, ProtoPool) or per view as an (M, 1)
    map (ProtoMask), PIP-Net's presence maps (the reference's ``similarity_maps``)."""
    if run.spec.presence:
        maps = out.maps
    else:
        maps = run.model.head.similarity(out.distances.float())
    idx = ids.reshape(*ids.shape, *([1] * (maps.dim() - 2)))
    maps = maps.float().gather(1, idx.expand(-1, -1, *maps.shape[2:]))
    return maps[..., None] if maps.dim() == 3 else maps
