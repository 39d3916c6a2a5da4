"""Reader for the CUB-200-2011 layout (also what the synthetic generator writes).

Required under the root: images.txt, classes.txt, image_class_labels.txt,
train_test_split.txt and the images/ folder. Optional: bounding_boxes.txt,
parts/parts.txt with parts/part_locs.txt, and segmentations/ (CUB's companion
archive, one PNG per image at the image's relative path with a .png suffix).
Every problem in a listing raises DatasetError naming the file and 1-based line.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from pipeline.errors import DatasetError
from pipeline.imageio import check_relative, resolve_inside
from pipeline.records import (
    DatasetListing,
    ImageRecord,
    PartLocation,
    RecordTable,
    StringColumn,
)

IMAGES = "images.txt"
CLASSES = "classes.txt"
LABELS = "image_class_labels.txt"
SPLIT = "train_test_split.txt"
BOXES = "bounding_boxes.txt"
PARTS = "parts/parts.txt"
PART_LOCS = "parts/part_locs.txt"
IMAGES_DIR = "images"
SEGMENTATIONS_DIR = "segmentations"


@dataclass(slots=True)
class _ImageTable:
    """images.txt in listing order: per row the image id, line number and path; the row of
    an image id through a dense array when the ids allow it, else a dict."""

    ids: array  # per row: image id
    lines: array  # per row: images.txt line number
    paths: StringColumn  # per row: path relative to images/
    dense_rows: Optional[array] = None  # image id -> row, -1: not listed
    rows: Optional[dict[int, int]] = None  # image id -> row when ids are too sparse

    def seal(self) -> None:
        """Build the id -> row lookup once every row is in."""
        top = max(self.ids)
        if top <= 4 * len(self.ids) + 1024:
            self.dense_rows = array("i", [-1]) * (top + 1)
            for row, image_id in enumerate(self.ids):
                self.dense_rows[image_id] = row
        else:
            self.rows = {image_id: row for row, image_id in enumerate(self.ids)}

    def row_of(self, image_id: int) -> Optional[int]:
        """The row of ``image_id``, None when images.txt does not list it."""
        if self.dense_rows is None:
            return self.rows.get(image_id)  # type: ignore[union-attr]
        row = self.dense_rows[image_id] if image_id < len(self.dense_rows) else -1
        return None if row < 0 else row

    def sorted_rows(self) -> np.ndarray:
        """Rows by image id."""
        return np.argsort(np.frombuffer(self.ids, dtype=np.int64), kind="stable")


@dataclass(slots=True)
class _Line:
    """One non-blank line of a listing, split into its fields."""

    file: str
    number: int
    fields: list[str]

    def where(self) -> str:
        return f"{self.file} line {self.number}"

    def error(self, message: str) -> DatasetError:
        return DatasetError(f"{self.where()}: {message}")

    def id_at(self, index: int, what: str) -> int:
        token = self.fields[index]
        if not (token.isascii() and token.isdigit()) or int(token) == 0:
            raise self.error(f"{what} '{token}' is not a positive integer")
        return int(token)

    def float_at(self, index: int, what: str) -> float:
        token = self.fields[index]
        try:
            value = float(token)
        except ValueError:
            raise self.error(f"{what} '{token}' is not a number") from None
        if not math.isfinite(value):
            raise self.error(f"{what} '{token}' is not a finite number")
        return value

    def flag_at(self, index: int, what: str) -> bool:
        token = self.fields[index]
        if token not in ("0", "1"):
            raise self.error(f"{what} must be 0 or 1, got '{token}'")
        return token == "1"


def read_cub(root: Path) -> DatasetListing:
    """Read a CUB-200-2011 style folder into a DatasetListing (class ids 0-based).

    Every per-image table is a flat array by images.txt row (no object per line or per
    keypoint) and each listing file is read line by line, so 10^5 images with 15 parts
    each stay a few hundred bytes per image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CUB dataset root '{root}' does not exist or is not a folder")
    for name in (IMAGES, CLASSES, LABELS, SPLIT):
        if not (root / name).is_file():
            raise DatasetError(f"CUB layout: required file {name} is missing in {root}")
    if not (root / IMAGES_DIR).is_dir():
        raise DatasetError(f"CUB layout: folder {IMAGES_DIR}/ is missing in {root}")

    notes: list[str] = []
    images = _read_images(root)
    class_names = _read_dense_names(root, CLASSES, "<class_id> <name>", "class id")
    labels = _read_labels(root, images, len(class_names))
    is_train = _read_split(root, images)
    boxes = _read_boxes(root, images, notes)
    part_names, parts = _read_parts(root, images, notes)
    has_segmentations = (root / SEGMENTATIONS_DIR).is_dir()
    if not has_segmentations:
        notes.append(f"{SEGMENTATIONS_DIR}/ absent: no object segmentations")

    records = RecordTable()
    for row in images.sorted_rows().tolist():
        records.append(
            ImageRecord(
                image_id=images.ids[row],
                path=PurePosixPath(IMAGES_DIR, images.paths[row]).as_posix(),
                class_id=labels[row],
                is_train=bool(is_train[row]),
                object_box_xywh=None if boxes is None else tuple(boxes[4 * row : 4 * row + 4]),  # type: ignore[arg-type]
                parts=None if parts is None else parts.of_row(row),
                segmentation_path=(_segmentation(root, images, row) if has_segmentations else None),
            )
        )
    if has_segmentations:
        missing = len(records) - int(records.has_segmentation().sum())
        if missing:
            notes.append(
                f"{SEGMENTATIONS_DIR}/: {missing} of {len(records)} images have no mask PNG"
            )
    return DatasetListing(
        records=records,
        class_names=class_names,
        part_names=part_names,
        source="cub",
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------ listings


def _read_lines(root: Path, name: str, layout: str, *, text_last: bool = False) -> Iterator[_Line]:
    """Non-blank lines of ``root/name`` split on whitespace, one at a time; ``layout`` gives
    the fields.

    With ``text_last`` the last field takes the rest of the line (names, paths with spaces).
    """
    count = len(layout.split())
    for number, raw in enumerate(_text_lines(root, name), start=1):
        if not raw.strip():
            continue
        fields = raw.split(maxsplit=count - 1) if text_last else raw.split()
        if text_last and fields:
            fields[-1] = fields[-1].rstrip()
        if len(fields) != count:
            raise DatasetError(
                f"{name} line {number}: expected {count} fields '{layout}', found {len(fields)}"
            )
        yield _Line(name, number, fields)


def _text_lines(root: Path, name: str) -> Iterator[str]:
    """The lines of a UTF-8 text file (``str.splitlines`` of its text, a leading BOM
    dropped), read a line at a time so that no copy of a whole listing is held."""
    offset = 0
    try:
        with open(root / name, "rb") as file:
            for chunk in file:  # ends at b"\n", never inside a UTF-8 character
                try:
                    text = chunk.decode("utf-8-sig" if offset == 0 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise DatasetError(
                        f"{name}: not UTF-8 text (bad byte at offset {offset + exc.start})"
                    ) from None
                offset += len(chunk)
                yield from text.splitlines()
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _read_images(root: Path) -> _ImageTable:
    """The images.txt table, each path checked."""
    images = _ImageTable(array("q"), array("i"), StringColumn())
    row_of_id: dict[int, int] = {}
    first_line_of_path: dict[str, int] = {}
    for line in _read_lines(root, IMAGES, "<image_id> <path>", text_last=True):
        image_id = line.id_at(0, "image id")
        if image_id >= 2**63:
            raise line.error(f"image id {image_id} is too large (at most 2^63 - 1)")
        if image_id in row_of_id:
            first = images.lines[row_of_id[image_id]]
            raise line.error(f"image id {image_id} is listed twice (first at line {first})")
        relpath = line.fields[1]
        pure = check_relative(relpath, listing=IMAGES, line=line.number)
        if pure.name in ("", "."):
            raise line.error(f"path '{relpath}' names a folder, not an image file")
        normalised = pure.as_posix()
        # A symlink (images/ itself included) must not lead out of the root.
        resolve_inside(root, f"{IMAGES_DIR}/{normalised}", listing=IMAGES, line=line.number)
        if normalised in first_line_of_path:
            raise line.error(
                f"path '{relpath}' is listed twice (first at line {first_line_of_path[normalised]})"
            )
        first_line_of_path[normalised] = line.number
        row_of_id[image_id] = len(images.paths)
        images.ids.append(image_id)
        images.lines.append(line.number)
        images.paths.append(normalised)
    if not images.paths:
        raise DatasetError(f"{IMAGES}: lists no images")
    del row_of_id, first_line_of_path
    images.seal()
    return images


def _read_dense_names(root: Path, name: str, layout: str, what: str) -> tuple[str, ...]:
    """Names of a ``<id> <name>`` listing whose ids must run 1..N; index = id - 1."""
    entries: dict[int, tuple[_Line, str]] = {}
    for line in _read_lines(root, name, layout, text_last=True):
        ident = line.id_at(0, what)
        if ident in entries:
            raise line.error(
                f"{what} {ident} is listed twice (first at line {entries[ident][0].number})"
            )
        entries[ident] = (line, line.fields[1])
    if not entries:
        raise DatasetError(f"{name}: lists nothing")
    count = len(entries)
    out_of_range = [line for ident, (line, _) in entries.items() if ident > count]
    if out_of_range:
        first = min(out_of_range, key=lambda line: line.number)
        raise first.error(
            f"{what} {first.fields[0]} breaks the numbering: ids must run 1..{count} without gaps"
        )
    return tuple(entries[ident][1] for ident in range(1, count + 1))


def _per_image(
    root: Path, name: str, layout: str, images: _ImageTable
) -> Iterator[tuple[int, _Line]]:
    """(images.txt row, line) of a one-line-per-image listing, ids checked both ways."""
    seen_at = array("i", bytes(4 * len(images.paths)))  # per row: line number, 0 = not yet
    for line in _read_lines(root, name, layout):
        image_id = line.id_at(0, "image id")
        row = images.row_of(image_id)
        if row is None:
            raise line.error(f"image id {image_id} is not listed in {IMAGES}")
        if seen_at[row]:
            raise line.error(f"image id {image_id} is listed twice (first at line {seen_at[row]})")
        seen_at[row] = line.number
        yield row, line
    for row in images.sorted_rows().tolist():
        if not seen_at[row]:
            raise DatasetError(
                f"{IMAGES} line {images.lines[row]}: image id {images.ids[row]} has no entry "
                f"in {name}"
            )


def _read_labels(root: Path, images: _ImageTable, class_count: int) -> array:
    """Per images.txt row: the 0-based class id."""
    labels = array("i", bytes(4 * len(images.paths)))
    for row, line in _per_image(root, LABELS, "<image_id> <class_id>", images):
        class_id = line.id_at(1, "class id")
        if class_id > class_count:
            raise line.error(f"class id {class_id} is not listed in {CLASSES}")
        labels[row] = class_id - 1
    return labels


def _read_split(root: Path, images: _ImageTable) -> bytearray:
    """Per images.txt row: 1 for train (CUB's 1), 0 for test (0)."""
    is_train = bytearray(len(images.paths))
    for row, line in _per_image(root, SPLIT, "<image_id> <is_training_image>", images):
        is_train[row] = line.flag_at(1, "is_training_image")
    return is_train


def _read_boxes(root: Path, images: _ImageTable, notes: list[str]) -> Optional[array]:
    """Per images.txt row: x, y, width, height (4 floats), or None when the file is absent."""
    if not (root / BOXES).is_file():
        notes.append(f"{BOXES} absent: no object boxes")
        return None
    boxes = array("d", bytes(8 * 4 * len(images.paths)))
    for row, line in _per_image(root, BOXES, "<image_id> <x> <y> <width> <height>", images):
        x, y, width, height = (
            line.float_at(i, what) for i, what in enumerate(("x", "y", "width", "height"), start=1)
        )
        if width <= 0 or height <= 0:
            raise line.error(f"box width and height must be > 0, got {width} x {height}")
        boxes[4 * row : 4 * row + 4] = array("d", (x, y, width, height))
    return boxes


@dataclass(slots=True)
class _PartTable:
    """Keypoints per (images.txt row, part): the part_locs.txt line (0: not listed),
    x, y and visibility, in flat arrays of rows x parts."""

    parts: int
    lines: array
    xy: array
    visible: bytearray

    def of_row(self, row: int) -> tuple[PartLocation, ...]:
        """The row's listed keypoints sorted by part id."""
        base = row * self.parts
        return tuple(
            PartLocation(
                part + 1,
                self.xy[2 * (base + part)],
                self.xy[2 * (base + part) + 1],
                bool(self.visible[base + part]),
            )
            for part in range(self.parts)
            if self.lines[base + part]
        )


def _read_parts(
    root: Path, images: _ImageTable, notes: list[str]
) -> tuple[Optional[tuple[str, ...]], Optional[_PartTable]]:
    """Part names and the part keypoints of every image (None when absent)."""
    has_names = (root / PARTS).is_file()
    has_locs = (root / PART_LOCS).is_file()
    if not has_names:
        if has_locs:
            raise DatasetError(
                f"{PART_LOCS} is present but {PARTS} is missing (it names the parts)"
            )
        notes.append("parts/ absent: no part keypoints")
        return None, None
    part_names = _read_dense_names(root, PARTS, "<part_id> <name>", "part id")
    if not has_locs:
        notes.append(f"{PART_LOCS} absent: no part keypoints")
        return part_names, None

    size = len(images.paths) * len(part_names)
    table = _PartTable(
        len(part_names), array("i", bytes(4 * size)), array("d", bytes(16 * size)), bytearray(size)
    )
    for line in _read_lines(root, PART_LOCS, "<image_id> <part_id> <x> <y> <visible>"):
        image_id = line.id_at(0, "image id")
        part_id = line.id_at(1, "part id")
        row = images.row_of(image_id)
        if row is None:
            raise line.error(f"image id {image_id} is not listed in {IMAGES}")
        if part_id > len(part_names):
            raise line.error(f"part id {part_id} is not listed in {PARTS}")
        x, y = line.float_at(2, "x"), line.float_at(3, "y")
        visible = line.flag_at(4, "visible")
        at = row * table.parts + part_id - 1
        if table.lines[at]:
            raise line.error(
                f"part {part_id} of image {image_id} is listed twice "
                f"(first at line {table.lines[at]})"
            )
        table.lines[at] = line.number
        table.xy[2 * at] = x
        table.xy[2 * at + 1] = y
        table.visible[at] = visible
    return part_names, table


def _segmentation(root: Path, images: _ImageTable, row: int) -> Optional[str]:
    """'segmentations/<relpath>.png' when that PNG exists, else None."""
    relative = PurePosixPath(SEGMENTATIONS_DIR, images.paths[row]).with_suffix(".png").as_posix()
    # Cheap existence test first; only existing masks pay for the symlink check.
    if (root / relative).is_file() and resolve_inside(
        root, relative, listing=IMAGES, line=images.lines[row]
    ).is_file():
        return relative
    return None
