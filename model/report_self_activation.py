"""ProtoPNet's self-activation of a pushed prototype: its similarity over the training
image it was pushed onto, upsampled to the model's input (bicubic, as the native maps),
and the box of the high-activation region (the pixels at or above its 95th percentile,
ProtoPNet's ``find_high_activation_crop``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.model_kinds import native_maps, upsampled_native
from pipeline.view_datasets import normalise

PERCENTILE = 95.0


@torch.no_grad()
def self_activation(
    kind: str, model: nn.Module, image: np.ndarray, prototypes: list[int], device: torch.device
) -> np.ndarray:
    """(len(prototypes), S, S) the upsampled similarity of each prototype over ``image``
    (S x S x 3 uint8, the model's input size)."""
    x = normalise(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None])  # a writable copy
    out = model(x.to(device))
    maps = native_maps(kind, out)[0, prototypes]
    side = image.shape[0]
    return upsampled_native(kind, maps, side, image.shape[1]).float().cpu().numpy()


def high_activation_box(activation: np.ndarray, percentile: float = PERCENTILE) -> np.ndarray:
    """Inclusive box (x0, y0, x1, y1) of the pixels at or above the map's ``percentile``."""
    mask = activation >= np.percentile(activation, percentile)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return np.array([cols[0], rows[0], cols[-1], rows[-1]])
