"""Reader for the CUB-200-2011 layout (also what the synthetic generator writes).

Required under the root: images.txt, classes.txt, image_class_labels.txt,
train_test_split.txt and the images/ folder. Optional: bounding_boxes.txt,
parts/parts.txt with parts/part_locs.txt, and segmentations/ (CUB's companion
archive, one PNG per image at the image's relative path with a .png suffix).
Every problem in a listing raises DatasetError naming the file and 1-based line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from pipeline.errors import DatasetError
from pipeline.imageio import check_relative, resolve_inside
from pipeline.records import DatasetListing, ImageRecord, PartLocation

IMAGES = "images.txt"
CLASSES = "classes.txt"
LABELS = "image_class_labels.txt"
SPLIT = "train_test_split.txt"
BOXES = "bounding_boxes.txt"
PARTS = "parts/parts.txt"
PART_LOCS = "parts/part_locs.txt"
IMAGES_DIR = "images"
SEGMENTATIONS_DIR = "segmentations"

ImageTable = dict[int, tuple[int, str]]  # image id -> (images.txt line, path)
PartTable = dict[int, tuple[PartLocation, ...]]  # image id -> keypoints by part id


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
    """Read a CUB-200-2011 style folder into a DatasetListing (class ids 0-based)."""
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
    segmentations = _find_segmentations(root, images, notes)

    records = tuple(
        ImageRecord(
            image_id=image_id,
            path=PurePosixPath(IMAGES_DIR, relpath).as_posix(),
            class_id=labels[image_id],
            is_train=is_train[image_id],
            object_box_xywh=None if boxes is None else boxes[image_id],
            parts=None if parts is None else parts.get(image_id, ()),
            segmentation_path=None if segmentations is None else segmentations.get(image_id),
        )
        for image_id, (_, relpath) in sorted(images.items())
    )
    return DatasetListing(
        records=records,
        class_names=class_names,
        part_names=part_names,
        source="cub",
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------ listings


def _read_lines(root: Path, name: str, layout: str, *, text_last: bool = False) -> list[_Line]:
    """Non-blank lines of ``root/name`` split on whitespace; ``layout`` gives the fields.

    With ``text_last`` the last field takes the rest of the line (names, paths with spaces).
    """
    count = len(layout.split())
    try:
        text = (root / name).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read ({exc.strerror or exc})") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split(maxsplit=count - 1) if text_last else raw.split()
        if text_last and fields:
            fields[-1] = fields[-1].rstrip()
        if len(fields) != count:
            raise DatasetError(
                f"{name} line {number}: expected {count} fields '{layout}', found {len(fields)}"
            )
        lines.append(_Line(name, number, fields))
    return lines


def _read_images(root: Path) -> ImageTable:
    """image id -> (line number, path relative to images/), each path checked."""
    images: ImageTable = {}
    first_line_of_path: dict[str, int] = {}
    for line in _read_lines(root, IMAGES, "<image_id> <path>", text_last=True):
        image_id = line.id_at(0, "image id")
        if image_id in images:
            raise line.error(
                f"image id {image_id} is listed twice (first at line {images[image_id][0]})"
            )
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
        images[image_id] = (line.number, normalised)
    if not images:
        raise DatasetError(f"{IMAGES}: lists no images")
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


def _per_image(root: Path, name: str, layout: str, images: ImageTable) -> dict[int, _Line]:
    """Lines of a one-line-per-image listing keyed by image id, ids checked both ways."""
    by_image: dict[int, _Line] = {}
    for line in _read_lines(root, name, layout):
        image_id = line.id_at(0, "image id")
        if image_id not in images:
            raise line.error(f"image id {image_id} is not listed in {IMAGES}")
        if image_id in by_image:
            raise line.error(
                f"image id {image_id} is listed twice (first at line {by_image[image_id].number})"
            )
        by_image[image_id] = line
    for image_id, (number, _) in sorted(images.items()):
        if image_id not in by_image:
            raise DatasetError(
                f"{IMAGES} line {number}: image id {image_id} has no entry in {name}"
            )
    return by_image


def _read_labels(root: Path, images: ImageTable, class_count: int) -> dict[int, int]:
    """image id -> 0-based class id."""
    labels = {}
    for image_id, line in _per_image(root, LABELS, "<image_id> <class_id>", images).items():
        class_id = line.id_at(1, "class id")
        if class_id > class_count:
            raise line.error(f"class id {class_id} is not listed in {CLASSES}")
        labels[image_id] = class_id - 1
    return labels


def _read_split(root: Path, images: ImageTable) -> dict[int, bool]:
    """image id -> True for train (CUB's 1), False for test (0)."""
    lines = _per_image(root, SPLIT, "<image_id> <is_training_image>", images)
    return {image_id: line.flag_at(1, "is_training_image") for image_id, line in lines.items()}


def _read_boxes(
    root: Path, images: ImageTable, notes: list[str]
) -> Optional[dict[int, tuple[float, float, float, float]]]:
    """image id -> (x, y, width, height), or None when the file is absent."""
    if not (root / BOXES).is_file():
        notes.append(f"{BOXES} absent: no object boxes")
        return None
    boxes = {}
    for image_id, line in _per_image(
        root, BOXES, "<image_id> <x> <y> <width> <height>", images
    ).items():
        x, y, width, height = (
            line.float_at(i, what) for i, what in enumerate(("x", "y", "width", "height"), start=1)
        )
        if width <= 0 or height <= 0:
            raise line.error(f"box width and height must be > 0, got {width} x {height}")
        boxes[image_id] = (x, y, width, height)
    return boxes


def _read_parts(
    root: Path, images: ImageTable, notes: list[str]
) -> tuple[Optional[tuple[str, ...]], Optional[PartTable]]:
    """Part names and image id -> part keypoints sorted by part id (None when absent)."""
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

    by_image: dict[int, dict[int, tuple[int, PartLocation]]] = {}
    for line in _read_lines(root, PART_LOCS, "<image_id> <part_id> <x> <y> <visible>"):
        image_id = line.id_at(0, "image id")
        part_id = line.id_at(1, "part id")
        if image_id not in images:
            raise line.error(f"image id {image_id} is not listed in {IMAGES}")
        if part_id > len(part_names):
            raise line.error(f"part id {part_id} is not listed in {PARTS}")
        location = PartLocation(
            part_id=part_id,
            x=line.float_at(2, "x"),
            y=line.float_at(3, "y"),
            visible=line.flag_at(4, "visible"),
        )
        seen = by_image.setdefault(image_id, {})
        if part_id in seen:
            raise line.error(
                f"part {part_id} of image {image_id} is listed twice "
                f"(first at line {seen[part_id][0]})"
            )
        seen[part_id] = (line.number, location)
    parts = {
        image_id: tuple(location for _, (_, location) in sorted(found.items()))
        for image_id, found in by_image.items()
    }
    return part_names, parts


def _find_segmentations(
    root: Path, images: ImageTable, notes: list[str]
) -> Optional[dict[int, str]]:
    """image id -> 'segmentations/<relpath>.png' for the PNGs that exist."""
    if not (root / SEGMENTATIONS_DIR).is_dir():
        notes.append(f"{SEGMENTATIONS_DIR}/ absent: no object segmentations")
        return None
    found = {}
    for image_id, (number, relpath) in images.items():
        relative = PurePosixPath(SEGMENTATIONS_DIR, relpath).with_suffix(".png").as_posix()
        # Cheap existence test first; only existing masks pay for the symlink check.
        if (root / relative).is_file() and resolve_inside(
            root, relative, listing=IMAGES, line=number
        ).is_file():
            found[image_id] = relative
    missing = len(images) - len(found)
    if missing:
        notes.append(f"{SEGMENTATIONS_DIR}/: {missing} of {len(images)} images have no mask PNG")
    return found
