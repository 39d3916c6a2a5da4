"""What a dataset reader returns: one record per listed image, before decoding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class PartLocation:
    """One ground-truth part keypoint in pixel coordinates of the image."""

    part_id: int  # 1-based, as in parts/parts.txt
    x: float
    y: float
    visible: bool


@dataclass(frozen=True)
class ImageRecord:
    """A listed image with its label, the dataset's own split and optional ground truth."""

    image_id: int  # the dataset's id (CUB images.txt), unique, > 0
    path: str  # POSIX path relative to the dataset root
    class_id: int  # 0-based, dense
    is_train: bool  # the dataset's own train/test assignment
    object_box_xywh: Optional[tuple[float, float, float, float]] = None
    parts: Optional[tuple[PartLocation, ...]] = None
    segmentation_path: Optional[str] = None  # relative to the dataset root


@dataclass(frozen=True)
class RejectedEntry:
    """Something a reader found but does not list as an image (prepare's rejects table)."""

    image_id: int  # numbered after every listed image
    path: str  # POSIX path relative to the dataset root
    reason: str


@dataclass(frozen=True)
class DatasetListing:
    """Everything a reader found: records, class names (index = class_id), part names."""

    records: tuple[ImageRecord, ...]
    class_names: tuple[str, ...]
    part_names: Optional[tuple[str, ...]] = None  # index = part_id - 1
    source: str = ""
    notes: tuple[str, ...] = field(default=())  # e.g. "segmentations/ absent"
    rejected: tuple[RejectedEntry, ...] = field(default=())  # e.g. a link to another class
