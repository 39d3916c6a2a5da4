"""What a dataset reader returns: one record per listed image, before decoding.

A listing keeps its records as columns (:class:`RecordTable`: flat arrays, paths as UTF-8
bytes) rather than as one Python object per image and per part keypoint: a record is a
few hundred bytes there instead of a few KiB, so 10^5 images fit in a flat memory budget.
Indexing or iterating the table gives :class:`ImageRecord` objects, made on demand.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional, overload

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class PartLocation:
    """One ground-truth part keypoint in pixel coordinates of the image."""

    part_id: int  # 1-based, as in parts/parts.txt
    x: float
    y: float
    visible: bool


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """A listed image with its label, the dataset's own split and optional ground truth."""

    image_id: int  # the dataset's id (CUB images.txt), unique, > 0
    path: str  # POSIX path relative to the dataset root
    class_id: int  # 0-based, dense
    is_train: bool  # the dataset's own train/test assignment
    object_box_xywh: Optional[Box] = None
    parts: Optional[tuple[PartLocation, ...]] = None
    segmentation_path: Optional[str] = None  # relative to the dataset root


class StringColumn:
    """Optional strings (POSIX paths) stored compactly: each folder once, each value as its
    folder's number and its last component in one UTF-8 byte buffer (None kept)."""

    def __init__(self) -> None:
        self._folders: list[str] = []
        self._folder_number: dict[str, int] = {}
        self._of_row = array("i")  # folder number per row, -1: None
        self._names = bytearray()
        self._ends = array("q")  # end of each row's last component in _names

    def append(self, value: Optional[str]) -> None:
        if value is None:
            self._of_row.append(-1)
        else:
            folder, slash, name = value.rpartition("/")
            folder += slash
            number = self._folder_number.setdefault(folder, len(self._folders))
            if number == len(self._folders):
                self._folders.append(folder)
            self._of_row.append(number)
            self._names += name.encode("utf-8")
        self._ends.append(len(self._names))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, row: int) -> Optional[str]:
        folder = self._of_row[row]
        if folder < 0:
            return None
        start = self._ends[row - 1] if row else 0
        return self._folders[folder] + self._names[start : self._ends[row]].decode("utf-8")

    def present(self) -> np.ndarray:
        """Per row: True where the value is not None."""
        return np.frombuffer(self._of_row, dtype=np.int32) >= 0


class RecordTable(Sequence[ImageRecord]):
    """The records of a listing as columns; ``table[i]`` builds the i-th ImageRecord."""

    def __init__(self, records: Iterable[ImageRecord] = ()) -> None:
        self._ids = array("q")
        self._classes = array("i")
        self._train = bytearray()
        self._paths = StringColumn()
        self._segmentations = StringColumn()
        self._boxes = array("d")  # 4 per row; zeros where there is no box
        self._has_box = bytearray()
        self._part_ends = array("q")  # end of each row's keypoints in the part columns
        self._has_parts = bytearray()
        self._part_ids = array("i")
        self._part_xy = array("d")  # x, y per keypoint
        self._part_visible = bytearray()
        for record in records:
            self.append(record)

    def append(self, record: ImageRecord) -> None:
        """Add one record at the end."""
        self._ids.append(record.image_id)
        self._classes.append(record.class_id)
        self._train.append(bool(record.is_train))
        self._paths.append(record.path)
        self._segmentations.append(record.segmentation_path)
        box = record.object_box_xywh
        self._has_box.append(box is not None)
        self._boxes.extend((0.0, 0.0, 0.0, 0.0) if box is None else box)
        self._has_parts.append(record.parts is not None)
        for part in record.parts or ():
            self._part_ids.append(part.part_id)
            self._part_xy.extend((part.x, part.y))
            self._part_visible.append(bool(part.visible))
        self._part_ends.append(len(self._part_ids))

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, row: int) -> ImageRecord: ...
    @overload
    def __getitem__(self, row: slice) -> list[ImageRecord]: ...
    def __getitem__(self, row: int | slice) -> ImageRecord | list[ImageRecord]:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"record {row} of {len(self)}")
        return ImageRecord(
            image_id=self._ids[row],
            path=self._paths[row],  # type: ignore[arg-type]  # never None
            class_id=self._classes[row],
            is_train=bool(self._train[row]),
            object_box_xywh=tuple(self._boxes[4 * row : 4 * row + 4])  # type: ignore[arg-type]
            if self._has_box[row]
            else None,
            parts=self._parts(row) if self._has_parts[row] else None,
            segmentation_path=self._segmentations[row],
        )

    def _parts(self, row: int) -> tuple[PartLocation, ...]:
        start = self._part_ends[row - 1] if row else 0
        return tuple(
            PartLocation(
                self._part_ids[k],
                self._part_xy[2 * k],
                self._part_xy[2 * k + 1],
                bool(self._part_visible[k]),
            )
            for k in range(start, self._part_ends[row])
        )

    def __iter__(self) -> Iterator[ImageRecord]:
        return (self[row] for row in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Sequence) else False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable while a reader fills it

    def image_ids(self) -> np.ndarray:
        """Per row: the image id (int64)."""
        return np.frombuffer(self._ids, dtype=np.int64).copy()

    def class_ids(self) -> np.ndarray:
        """Per row: the 0-based class id (int32)."""
        return np.frombuffer(self._classes, dtype=np.int32).copy()

    def is_train(self) -> np.ndarray:
        """Per row: the dataset's own train (True) / test (False) assignment."""
        return np.frombuffer(self._train, dtype=np.bool_).copy()

    def has_parts(self) -> np.ndarray:
        """Per row: True where the record has part keypoints (possibly none listed)."""
        return np.frombuffer(self._has_parts, dtype=np.bool_).copy()

    def has_segmentation(self) -> np.ndarray:
        """Per row: True where the record names a segmentation PNG."""
        return self._segmentations.present()


@dataclass(frozen=True)
class RejectedEntry:
    """Something a reader found but does not list as an image (prepare's rejects table)."""

    image_id: int  # numbered after every listed image
    path: str  # POSIX path relative to the dataset root
    reason: str


@dataclass(frozen=True)
class DatasetListing:
    """Everything a reader found: records, class names (index = class_id), part names.

    ``records`` may be given as any iterable of ImageRecord; it is kept as a RecordTable.
    """

    records: RecordTable
    class_names: tuple[str, ...]
    part_names: Optional[tuple[str, ...]] = None  # index = part_id - 1
    source: str = ""
    notes: tuple[str, ...] = field(default=())  # e.g. "segmentations/ absent"
    rejected: tuple[RejectedEntry, ...] = field(default=())  # e.g. a link to another class

    def __post_init__(self) -> None:
        if not isinstance(self.records, RecordTable):
            object.__setattr__(self, "records", RecordTable(self.records))
