"""What every segmenter returns for one image: masks as COCO RLE with their records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class MaskSet:
    """One image's masks. ``rles`` are COCO compressed RLE counts (bytes) of H x W masks;
    boxes are inclusive (x_min, y_min, x_max, y_max) pixel boxes."""

    height: int
    width: int
    rles: list[bytes]
    boxes: np.ndarray  # (N, 4) int32
    areas: np.ndarray  # (N,) int64
    predicted_iou: np.ndarray  # (N,) float32
    stability_score: np.ndarray  # (N,) float32
    points: np.ndarray  # (N, 2) float32, the prompt (x, y) in image pixels
    crop_boxes: Optional[np.ndarray] = None  # (N, 4) int32 x, y, w, h of SAM's crop (SAM only)

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def from_binary_masks(
        cls,
        masks: np.ndarray,
        predicted_iou: np.ndarray,
        stability_score: np.ndarray,
        points: np.ndarray,
    ) -> MaskSet:
        """Encode (N, H, W) boolean masks in one pycocotools call and derive boxes/areas."""
        n, height, width = masks.shape
        if n == 0:
            return cls.empty(height, width)
        encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        return cls(
            height,
            width,
            [e["counts"] for e in encoded],
            boxes_of(masks),
            masks.reshape(n, -1).sum(axis=1).astype(np.int64),
            np.asarray(predicted_iou, np.float32),
            np.asarray(stability_score, np.float32),
            np.asarray(points, np.float32).reshape(n, 2),
        )

    @classmethod
    def empty(cls, height: int, width: int) -> MaskSet:
        """No masks."""
        return cls(
            height,
            width,
            [],
            np.zeros((0, 4), np.int32),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, 2), np.float32),
        )

    def decode(self) -> np.ndarray:
        """All masks as an (N, H, W) boolean array."""
        if not self.rles:
            return np.zeros((0, self.height, self.width), bool)
        rles = [{"size": [self.height, self.width], "counts": c} for c in self.rles]
        return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """Inclusive (x_min, y_min, x_max, y_max) of each (N, H, W) mask; zeros when empty."""
    n = masks.shape[0]
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.zeros((n, 4), np.int32)
    has = rows.any(axis=1)
    if has.any():
        boxes[has, 0] = cols[has].argmax(axis=1)
        boxes[has, 1] = rows[has].argmax(axis=1)
        boxes[has, 2] = masks.shape[2] - 1 - cols[has][:, ::-1].argmax(axis=1)
        boxes[has, 3] = masks.shape[1] - 1 - rows[has][:, ::-1].argmax(axis=1)
    return boxes
