"""The views of one image: box maths, ordering, padding, fill, resize.

Pure functions on arrays; the crops stage (pipeline/crops.py) strings them together, and
the evaluate stage cuts a perturbed image's views again with :func:`cut_planned_views`.

- Boxes are inclusive pixel boxes (x_min, y_min, x_max, y_max), computed from the RLE
  mask itself; width = x_max - x_min + 1.
- A mask is usable when its box is more than ``min_box_size`` px wide and tall.
- Usable masks are ordered by a score, largest first (``area``, ``predicted_iou`` or
  ``stability_score``); ties go to the larger area, then to the earlier mask.
- The top ``num_views`` are kept; fewer are padded by cyclic repetition, each repeat
  recording ``duplicate_of``, the view it repeats (-1 for an original).
- An image with no usable mask gets the whole image as view 0, repeated (``fallback``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

FILL_MODES = ("original", "zero", "mean")


@dataclass(frozen=True)
class ViewPlan:
    """Which mask each of an image's M views shows, and where.

    ``mask_index[v]`` is the row of the mask among the image's masks (-1: the whole image),
    ``duplicate_of[v]`` the earlier view that view v repeats (-1: none), ``boxes[v]`` the
    inclusive box. Views 0..distinct-1 are the distinct ones, in order.
    """

    mask_index: np.ndarray  # (M,) int32
    duplicate_of: np.ndarray  # (M,) int16
    boxes: np.ndarray  # (M, 4) int32
    fallback: bool

    @property
    def distinct(self) -> int:
        """How many views are not repeats (they come first)."""
        return int((self.duplicate_of < 0).sum())


def rle_objects(height: int, width: int, counts: Sequence[bytes]) -> list[dict]:
    """pycocotools RLE objects of compressed ``counts`` for an H x W image."""
    return [{"size": [height, width], "counts": c} for c in counts]


def boxes_and_areas(
    height: int, width: int, counts: Sequence[bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive boxes (N, 4) int32 and pixel areas (N,) int64 straight from the RLE.

    An empty mask gets a box of width and height 0, so it is never usable.
    """
    if not counts:
        return np.zeros((0, 4), np.int32), np.zeros(0, np.int64)
    rles = rle_objects(height, width, counts)
    xywh = np.asarray(mask_utils.toBbox(rles), np.int64).reshape(-1, 4)
    boxes = np.stack(
        [xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2] - 1, xywh[:, 1] + xywh[:, 3] - 1], axis=1
    )
    areas = np.asarray(mask_utils.area(rles), np.int64).reshape(-1)
    return boxes.astype(np.int32), areas


def box_sides(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Width and height of inclusive boxes."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    return boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1


def usable_masks(boxes: np.ndarray, min_box_size: int) -> np.ndarray:
    """True where the box is more than ``min_box_size`` px wide and tall."""
    width, height = box_sides(boxes)
    return (width > min_box_size) & (height > min_box_size)


def order_masks(scores: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Mask rows by score, largest first; ties: larger area, then lower row. NaN is last."""
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    areas = np.asarray(areas, np.float64)
    rows = np.arange(len(scores))
    return np.lexsort((rows, -areas, -scores))


def pad_cyclically(ranked: np.ndarray, num_views: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_views`` of ``ranked`` (non-empty), cycled when fewer.

    Returns (chosen, duplicate_of): view v shows ``ranked[v % k]``; a repeat records the
    view it repeats (``v % k``), an original -1.
    """
    k = min(len(ranked), num_views)
    views = np.arange(num_views)
    chosen = np.asarray(ranked)[views % k]
    duplicate_of = np.where(views < k, -1, views % k).astype(np.int16)
    return chosen, duplicate_of


def plan_views(
    boxes: np.ndarray,
    areas: np.ndarray,
    scores: np.ndarray,
    *,
    width: int,
    height: int,
    num_views: int,
    min_box_size: int,
) -> ViewPlan:
    """The M views of one image from its masks' boxes, areas and ordering scores."""
    boxes = np.asarray(boxes, np.int32).reshape(-1, 4)
    keep = np.flatnonzero(usable_masks(boxes, min_box_size))
    if len(keep) == 0:
        whole = np.array([[0, 0, width - 1, height - 1]], np.int32)
        chosen, duplicate_of = pad_cyclically(np.array([-1]), num_views)
        return ViewPlan(
            chosen.astype(np.int32),
            duplicate_of,
            np.repeat(whole, num_views, axis=0),
            fallback=True,
        )
    ranked = keep[order_masks(np.asarray(scores)[keep], np.asarray(areas)[keep])]
    chosen, duplicate_of = pad_cyclically(ranked, num_views)
    return ViewPlan(chosen.astype(np.int32), duplicate_of, boxes[chosen], fallback=False)


def interpolation_for(box_width: int, box_height: int, size: int) -> int:
    """Area interpolation when the box shrinks along either side, else bilinear."""
    return cv2.INTER_AREA if box_width > size or box_height > size else cv2.INTER_LINEAR


def resize_square(region: np.ndarray, size: int) -> np.ndarray:
    """An H x W x 3 uint8 region resized to size x size (aspect ratio not kept)."""
    height, width = region.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(region)
    return cv2.resize(
        np.ascontiguousarray(region),
        (size, size),
        interpolation=interpolation_for(width, height, size),
    )


def apply_fill(region: np.ndarray, mask: np.ndarray, fill: str) -> np.ndarray:
    """Pixels outside ``mask`` kept (original), zeroed (zero) or set to the mask's mean
    colour, rounded (mean). ``region`` is H x W x 3 uint8, ``mask`` H x W bool."""
    if fill == "original":
        return region
    if fill == "zero":
        return np.where(mask[:, :, None], region, np.uint8(0))
    if fill == "mean":
        inside = region[mask]
        colour = np.rint(inside.mean(axis=0)) if len(inside) else np.zeros(3)
        return np.where(mask[:, :, None], region, colour.astype(np.uint8))
    raise ValueError(f"unknown fill mode {fill!r} (allowed: {', '.join(FILL_MODES)})")


def cut_view(
    image: np.ndarray,
    box: np.ndarray,
    size: int,
    *,
    mask: np.ndarray | None = None,
    fill: str = "original",
) -> np.ndarray:
    """The view of ``box`` (inclusive) from an H x W x 3 image: filled outside ``mask``
    (an H x W bool mask of the whole image; None keeps every pixel), resized to size x size."""
    x0, y0, x1, y1 = (int(v) for v in box)
    region = image[y0 : y1 + 1, x0 : x1 + 1]
    if mask is not None and fill != "original":
        region = apply_fill(region, mask[y0 : y1 + 1, x0 : x1 + 1], fill)
    return resize_square(region, size)


def cut_planned_views(
    image: np.ndarray,
    boxes: np.ndarray,
    mask_index: np.ndarray,
    rles: Sequence[bytes],
    size: int,
    fill: str,
) -> np.ndarray:
    """The views of one image as they are stored: what the crops stage writes and what the
    evaluate stage cuts again from a perturbed copy of the image.

    Args:
        image: H x W x 3 uint8.
        boxes: (N, 4) inclusive boxes, one per view.
        mask_index: (N,) row of each view's mask in ``rles`` (-1: the whole image, no fill).
        rles: the image's compressed RLE masks (read only when ``fill`` needs them).
        size: side of the square views.
        fill: what the pixels outside the mask become (FILL_MODES).

    Returns:
        (N, size, size, 3) uint8.
    """
    height, width = image.shape[:2]
    masks: list[np.ndarray | None] = [None] * len(boxes)
    if fill != "original":
        used = [v for v, k in enumerate(mask_index) if k >= 0]
        decoded = decode_masks(height, width, [rles[int(mask_index[v])] for v in used])
        for v, mask in zip(used, decoded, strict=True):
            masks[v] = mask
    return np.stack(
        [cut_view(image, box, size, mask=masks[v], fill=fill) for v, box in enumerate(boxes)]
    )


def view_owners(duplicate_of: np.ndarray) -> np.ndarray:
    """For each view, the view whose pixels it shows: itself, or the view it repeats."""
    duplicate_of = np.asarray(duplicate_of)
    return np.where(duplicate_of < 0, np.arange(len(duplicate_of)), duplicate_of)


def decode_masks(height: int, width: int, counts: Sequence[bytes]) -> np.ndarray:
    """(N, H, W) bool masks from compressed RLE counts, in one pycocotools call."""
    if not counts:
        return np.zeros((0, height, width), bool)
    decoded = mask_utils.decode(rle_objects(height, width, counts))
    return decoded.transpose(2, 0, 1).astype(bool)
