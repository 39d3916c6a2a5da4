"""Shared by the Stanford Dogs and Stanford Cars readers: listed entries -> DatasetListing.

Both datasets give boxes as corners ``x1, y1, x2, y2`` in MATLAB's / Pascal VOC's
convention: 1-based, inclusive pixel coordinates (a box with x1 = x2 is one pixel wide).
The images index holds ``x, y, width, height`` as the CUB reader and the synthetic set
do: 0-based column and row of the top-left pixel and the count of pixels covered, so a
corner box becomes ``(x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1)``. An image with several
boxes (Stanford Dogs: one per dog) gets the union: the smallest box holding them all.

Boxes are checked against the image's size (read from its header, not decoded): a box
that reaches past an edge is clamped to the image (annotation tools often end a box one
pixel past it), counted in the listing's notes; a box with no pixel inside the image
cannot belong to it and raises DatasetError naming the annotation and the object. An
image whose header cannot be read is left unchecked: prepare rejects it when decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image

from pipeline.errors import DatasetError
from pipeline.imageio import check_relative, resolve_inside
from pipeline.records import DatasetListing, ImageRecord, RecordTable

Corners = tuple[float, float, float, float]  # x1, y1, x2, y2: 1-based, inclusive
Box = tuple[float, float, float, float]  # x, y, width, height: 0-based, pixels covered


@dataclass(frozen=True)
class Entry:
    """One listed image before its box is checked against the image."""

    where: str  # the listing entry, e.g. "lists/train_list.mat: entry 17"
    path: str  # POSIX path relative to the dataset root, checked
    label: int  # 1-based class number, as in the annotation files
    is_train: bool
    corners: Optional[tuple[Corners, ...]]  # one per object; None: no box for this image
    box_where: str = ""  # where the corners come from (annotation file, entry)


def listed_path(root: Path, relative: str, where: str) -> str:
    """A listed image path checked by text and on disk (no '..', no link out of the root)."""
    pure = check_relative(relative, listing=where)
    if pure.name in ("", "."):
        raise DatasetError(f"{where}: path '{relative}' names a folder, not an image file")
    resolve_inside(root, pure.as_posix(), listing=where)
    return pure.as_posix()


def corners(values: tuple[float, float, float, float], where: str) -> Corners:
    """Validated corners: finite numbers with x1 <= x2 and y1 <= y2."""
    x1, y1, x2, y2 = values
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{where}: box corners must be finite numbers, got {_shown(values)}")
    if x2 < x1 or y2 < y1:
        raise DatasetError(
            f"{where}: box x1 {x1:g} y1 {y1:g} x2 {x2:g} y2 {y2:g} is empty "
            "(x2 must be >= x1 and y2 >= y1)"
        )
    return x1, y1, x2, y2


def build_listing(
    root: Path,
    entries: list[Entry],
    class_names: tuple[str, ...],
    *,
    source: str,
    notes: list[str],
) -> DatasetListing:
    """Records numbered 1..N in ``entries`` order (class id = label - 1), boxes fitted.

    A path listed twice (in one list or in both splits) is an error naming both entries.
    """
    first: dict[str, Entry] = {}
    for entry in entries:
        if entry.path in first:
            raise DatasetError(
                f"{entry.where}: path '{entry.path}' is listed twice "
                f"(first at {first[entry.path].where})"
            )
        first[entry.path] = entry
    clamped: list[str] = []
    records = RecordTable(
        ImageRecord(
            image_id=number,
            path=entry.path,
            class_id=entry.label - 1,
            is_train=entry.is_train,
            object_box_xywh=_fitted_box(root, entry, clamped),
        )
        for number, entry in enumerate(entries, start=1)
    )
    if clamped:
        notes.append(
            f"{len(clamped)} object box(es) reached past their image and were clamped to it "
            f"(first: {clamped[0]})"
        )
    notes.append("no part keypoints and no object segmentations in this dataset")
    return DatasetListing(
        records=records, class_names=class_names, source=source, notes=tuple(notes)
    )


def image_size(path: Path) -> Optional[tuple[int, int]]:
    """(width, height) from the image header, or None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # any unreadable file: prepare's decoder gives the reason
        return None


def _fitted_box(root: Path, entry: Entry, clamped: list[str]) -> Optional[Box]:
    """The union of the entry's boxes as x, y, w, h, clamped to the image."""
    if not entry.corners:
        return None
    x0 = min(c[0] for c in entry.corners) - 1
    y0 = min(c[1] for c in entry.corners) - 1
    x1 = max(c[2] for c in entry.corners)
    y1 = max(c[3] for c in entry.corners)
    size = image_size(root / entry.path)
    if size is None:
        return (x0, y0, x1 - x0, y1 - y0)
    width, height = size
    for number, (cx1, cy1, cx2, cy2) in enumerate(entry.corners, start=1):
        if cx2 <= 0 or cy2 <= 0 or cx1 - 1 >= width or cy1 - 1 >= height:
            raise DatasetError(
                f"{entry.box_where}: object {number}: box x1 {cx1:g} y1 {cy1:g} x2 {cx2:g} "
                f"y2 {cy2:g} lies outside the {width} x {height} image {entry.path}"
            )
    fitted = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if fitted != (x0, y0, x1, y1):
        clamped.append(f"{entry.box_where}, image {width} x {height}")
    return (fitted[0], fitted[1], fitted[2] - fitted[0], fitted[3] - fitted[1])


def _shown(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:g}" for v in values)
