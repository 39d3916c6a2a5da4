"""The evaluated test images: ground truth from the images index, view boxes from the crops
index, and the image files themselves.

The crops index is read once: its rows give each image's M views (boxes, masks, repeats,
whole-image fallback), its facts the crops params the views were cut with (``num_views``,
``size``, ``fill``), so the evaluate stage cuts a perturbed copy exactly as crops did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import layout
from pipeline.imageio import load_rgb, read_mask_png, resolve_inside
from pipeline.tables import read_table


@dataclass(frozen=True)
class TestSet:
    """The evaluated test images (sorted by image_id) with ground truth and view boxes."""

    image_ids: np.ndarray  # (N,)
    labels: np.ndarray  # (N,)
    paths: list[str]
    sizes: np.ndarray  # (N, 2) height, width
    segmentation: list[Optional[str]]
    part_xy: Optional[np.ndarray]  # (N, Q, 2) or None (no keypoints at all)
    part_visible: Optional[np.ndarray]
    has_parts: np.ndarray  # (N,) bool
    boxes: np.ndarray  # (N, M, 4) inclusive x0, y0, x1, y1
    mask_index: np.ndarray  # (N, M) -1: the whole image
    duplicate_of: np.ndarray  # (N, M) -1: not a repeat
    fallback: np.ndarray  # (N,) bool: every view is the whole image
    crop_shards: list[str]
    class_names: list[str]
    part_names: Optional[list[str]]
    num_views: int  # crops index facts (M)
    fill: str  # crops index facts: pixels outside the mask
    object_boxes: Optional[np.ndarray] = None  # (N, 4) x, y, w, h; NaN row: no box

    def object_box(self, i: int) -> Optional[np.ndarray]:
        """The (4,) x, y, w, h object box of row ``i``, or None without one."""
        if self.object_boxes is None or np.isnan(self.object_boxes[i]).any():
            return None
        return self.object_boxes[i]

    @property
    def parts_known(self) -> bool:
        """Whether any evaluated image has part keypoints."""
        return self.part_xy is not None and bool(self.has_parts.any())

    def parts_of(self, i: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """(Q, 2) keypoints and (Q,) visibility of row ``i``; (None, None) without parts."""
        if self.part_xy is None or not self.has_parts[i]:
            return None, None
        return self.part_xy[i], self.part_visible[i]


def id_array(values: Iterable[int]) -> pa.Array:
    """An int64 Arrow array of ids (for ``pc.is_in`` filters)."""
    return pa.array(np.asarray(list(values), np.int64), type=pa.int64())


def parts_arrays(
    rows: Iterable[Optional[Iterable[dict]]], num_parts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense arrays from the images index's ``parts`` cells.

    ``rows``: per image, None (no keypoints) or a list of ``{"part_id", "x", "y",
    "visible"}`` (part_id 1-based). Returns ``(part_xy (N, Q, 2) float32, part_visible
    (N, Q) bool, has_parts (N,) bool)``; an image without keypoints has no visible part
    and ``has_parts`` False (leave it out of part-based metrics).
    """
    rows = list(rows)
    xy = np.zeros((len(rows), num_parts, 2), np.float32)
    vis = np.zeros((len(rows), num_parts), bool)
    has = np.zeros(len(rows), bool)
    for i, parts in enumerate(rows):
        if parts is None:
            continue
        has[i] = True
        for p in parts:
            q = int(p["part_id"]) - 1
            if not 0 <= q < num_parts:
                raise ValueError(f"part_id {p['part_id']} outside 1..{num_parts}")
            xy[i, q] = (float(p["x"]), float(p["y"]))
            vis[i, q] = bool(p["visible"])
    return xy, vis, has


def load_test_set(project_root: Path, image_ids: np.ndarray) -> TestSet:
    """Ground truth and view boxes of ``image_ids`` from the images and crops indexes.

    Args:
        project_root: the project folder.
        image_ids: the evaluated images, sorted.

    Returns:
        The TestSet, rows in the order of ``image_ids``.
    """
    images, info = read_table(project_root / layout.IMAGES_INDEX, "images")
    rows = {r["image_id"]: r for r in images.to_pylist()}
    crops, crops_info = read_table(project_root / layout.CROPS_INDEX, "crops")
    facts = crops_info["facts"]
    m = int(facts["num_views"])
    crops = crops.filter(pc.is_in(crops["image_id"], id_array(image_ids))).sort_by(
        [("image_id", "ascending"), ("view", "ascending")]
    )
    n = len(image_ids)
    picked = [rows[int(i)] for i in image_ids]
    part_names = info["facts"].get("part_names")
    part_rows = [r["parts"] for r in picked]
    if any(p is not None for p in part_rows):
        q = (
            len(part_names)
            if part_names
            else max(int(p["part_id"]) for ps in part_rows if ps for p in ps)
        )
        xy, vis, has = parts_arrays(part_rows, q)
    else:
        xy = vis = None
        has = np.zeros(len(picked), bool)
    return TestSet(
        image_ids=np.asarray(image_ids),
        labels=np.asarray([r["class_id"] for r in picked]),
        paths=[r["path"] for r in picked],
        sizes=np.asarray([(r["height"], r["width"]) for r in picked], np.int64).reshape(-1, 2),
        segmentation=[r["segmentation_path"] for r in picked],
        part_xy=xy,
        part_visible=vis,
        has_parts=has,
        boxes=np.asarray(crops["box"].to_pylist(), np.int64).reshape(n, m, 4),
        mask_index=crops["mask_index"].to_numpy().reshape(n, m),
        duplicate_of=crops["duplicate_of"].to_numpy().reshape(n, m),
        fallback=crops["fallback"].to_numpy(zero_copy_only=False)[::m].astype(bool),
        crop_shards=crops["shard"].to_pylist()[::m],
        class_names=list(info["facts"]["class_names"]),
        part_names=part_names,
        num_views=m,
        fill=str(facts["fill"]),
        object_boxes=np.asarray(
            [r.get("object_box_xywh") or [np.nan] * 4 for r in picked], np.float64
        ).reshape(n, 4),
    )


def fallback_share(test: TestSet) -> float:
    """Share of the test images (in %) whose views are all the whole image (no usable mask)."""
    return round(100.0 * float(test.fallback.mean()), 2) if len(test.fallback) else 0.0


def load_image(data_root: Path, path: str) -> np.ndarray:
    """The H x W x 3 uint8 pixels of an image of the index (``path`` under ``data_root``)."""
    return load_rgb(resolve_inside(data_root, path))


def load_segmentation(
    data_root: Path, path: Optional[str], height: int, width: int
) -> Optional[np.ndarray]:
    """G as (H, W) bool, resized (nearest) to the image if its size differs; None if absent."""
    if not path:
        return None
    g = read_mask_png(resolve_inside(data_root, path))
    if g.shape != (height, width):
        g = cv2.resize(g.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    return g
