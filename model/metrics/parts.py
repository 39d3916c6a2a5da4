"""Part keypoints as dense arrays (:func:`parts_arrays`, from the data side
pipeline/evaluation_set.py), and which parts fall inside which masks.

Conventions (the images index's ``parts`` column and the synthetic generator):

* ``part_xy`` (N, Q, 2) float: keypoint (x, y) in pixel coordinates of the SAME canvas as
  the masks it is tested against (image-sized; rescale x and y yourself when the masks
  live on a resized canvas). Column q holds part_id q + 1 (part ids are 1-based).
* ``part_visible`` (N, Q) bool: False for a hidden part and for a part the image does not
  list. An invisible part is never "contained" in anything.
* A keypoint's pixel: pixel centres sit at integer coordinates, so (x, y) lies in pixel
  (row, col) = (floor(y + 0.5), floor(x + 0.5)), clipped into the canvas.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from model.metrics.common import ArrayLike, as_bool, as_tensor
from pipeline.evaluation_set import parts_arrays  # noqa: F401  (the keypoint arrays, data side)


def keypoint_index(
    part_xy: ArrayLike, height: int, width: int, device: Optional[torch.device] = None
) -> Tensor:
    """(..., Q) long flat pixel index row * width + col of every keypoint (see module doc)."""
    xy = as_tensor(part_xy, torch.float64, device=device)
    col = torch.floor(xy[..., 0] + 0.5).long().clamp(0, width - 1)
    row = torch.floor(xy[..., 1] + 0.5).long().clamp(0, height - 1)
    return row * width + col


def parts_in_masks(masks: ArrayLike, part_xy: ArrayLike, part_visible: ArrayLike) -> Tensor:
    """(N, K, Q) bool: visible part q of image n lies inside mask k of image n.

    ``masks`` (N, K, H, W) bool (e.g. the top-5 % saliency masks S of an image's top-k
    prototypes, or a segmenter's masks); ``part_xy`` (N, Q, 2); ``part_visible`` (N, Q).
    """
    m = as_bool(masks)
    if m.dim() != 4:
        raise ValueError(f"masks must be (N, K, H, W), got {tuple(m.shape)}")
    n, k, h, w = m.shape
    idx = keypoint_index(part_xy, h, w, device=m.device)  # (N, Q)
    vis = as_bool(part_visible, device=m.device)  # (N, Q)
    q = idx.shape[-1]
    inside = m.reshape(n, k, h * w).gather(2, idx[:, None, :].expand(n, k, q))
    return inside & vis[:, None, :]
