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
from pipeline.errors import ArtifactError
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
    image_ids = np.asarray(image_ids, np.int64)
    n = len(image_ids)
    wanted = pc.field("image_id").isin(id_array(image_ids))
    # only the evaluated images' rows and the columns evaluate uses
    index_path = project_root / layout.IMAGES_INDEX
    images, info = read_table(
        index_path,
        "images",
        columns=[
            "image_id",
            "path",
            "class_id",
            "width",
            "height",
            "object_box_xywh",
            "parts",
            "segmentation_path",
        ],
        filters=wanted,
    )
    images = images.take(_positions(images["image_id"].to_numpy(), image_ids, index_path))
    crops_path = project_root / layout.CROPS_INDEX
    crops, crops_info = read_table(
        crops_path,
        "crops",
        columns=["image_id", "view", "box", "mask_index", "duplicate_of", "fallback", "shard"],
        filters=wanted,
    )
    facts = crops_info["facts"]
    m = int(facts["num_views"])
    crops = crops.sort_by([("image_id", "ascending"), ("view", "ascending")])
    if len(crops) != n * m or (crops["image_id"].to_numpy()[::m] != image_ids).any():
        raise ArtifactError(
            f"{crops_path}: does not hold {m} views of every evaluated image "
            f"({len(crops)} rows for {n} images); rerun crops"
        )
    first = crops.take(np.arange(0, len(crops), m))
    part_names = info["facts"].get("part_names")
    part_rows = images["parts"].to_pylist()
    if any(p is not None for p in part_rows):
        q = (
            len(part_names)
            if part_names
            else max(int(p["part_id"]) for ps in part_rows if ps for p in ps)
        )
        xy, vis, has = parts_arrays(part_rows, q)
    else:
        xy = vis = None
        has = np.zeros(n, bool)
    del part_rows
    boxes = images["object_box_xywh"].to_pylist()
    return TestSet(
        image_ids=image_ids,
        labels=images["class_id"].to_numpy().astype(np.int64),
        paths=images["path"].to_pylist(),
        sizes=np.stack([images["height"].to_numpy(), images["width"].to_numpy()], axis=1).astype(
            np.int64
        ),
        segmentation=images["segmentation_path"].to_pylist(),
        part_xy=xy,
        part_visible=vis,
        has_parts=has,
        boxes=crops["box"].combine_chunks().flatten().to_numpy().astype(np.int64).reshape(n, m, 4),
        mask_index=crops["mask_index"].to_numpy().reshape(n, m),
        duplicate_of=crops["duplicate_of"].to_numpy().reshape(n, m),
        fallback=first["fallback"].to_numpy(zero_copy_only=False).astype(bool),
        crop_shards=first["shard"].to_pylist(),
        class_names=list(info["facts"]["class_names"]),
        part_names=part_names,
        num_views=m,
        fill=str(facts["fill"]),
        object_boxes=np.asarray([b or [np.nan] * 4 for b in boxes], np.float64).reshape(n, 4),
    )


def _positions(found: np.ndarray, wanted: np.ndarray, path: Path) -> np.ndarray:
    """Where each of ``wanted`` sits in ``found`` (ids read back from ``path``); an
    ArtifactError naming the file and the first id it lacks."""
    if len(found) == 0:
        missing = np.ones(len(wanted), bool)
        at = np.zeros(len(wanted), np.int64)
    else:
        order = np.argsort(found, kind="stable")
        at = order[np.minimum(np.searchsorted(found, wanted, sorter=order), len(found) - 1)]
        missing = found[at] != wanted
    if missing.any():
        raise ArtifactError(
            f"{path}: image {int(wanted[missing][0])} is not in the images index; "
            f"the evaluated crops are stale, rerun crops"
        )
    return at


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
