"""Reader for the Stanford Dogs layout (images.tar, annotation.tar and lists.tar unpacked).

Required under the root: ``Images/<wnid>-<name>/<file>.jpg``, ``lists/train_list.mat``
and ``lists/test_list.mat`` (MATLAB v5: N x 1 cell arrays ``file_list``, paths relative
to Images/, and ``annotation_list``, paths relative to Annotation/, and ``labels``, the
1-based class numbers). The lists are the official split: an image listed nowhere is not
read. Optional: ``Annotation/<wnid>-<name>/<file>`` (Pascal VOC XML, no extension) with
one ``<object><bndbox>`` per dog; the image's object box is the union of them all.

Image ids number the train list's entries 1..N in order, then the test list's. Class ids
follow the labels (label 1 is class 0); each label must belong to one class folder. A
class is named after its folder, ``n02085620-Chihuahua`` -> ``Chihuahua (n02085620)``
(the wnid kept, the images index having no column of its own for it). Every problem
raises DatasetError naming the file and the entry (or the annotation's object).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path, PurePosixPath

from pipeline.datasets.annotated import Corners, Entry, build_listing, corners, listed_path
from pipeline.datasets.matfiles import MatFile
from pipeline.errors import DatasetError
from pipeline.imageio import resolve_inside
from pipeline.records import DatasetListing

IMAGES_DIR = "Images"
ANNOTATION_DIR = "Annotation"
TRAIN_LIST = "lists/train_list.mat"
TEST_LIST = "lists/test_list.mat"
_WNID_FOLDER = re.compile(r"(n\d+)-(.+)")


def read_stanford_dogs(root: Path) -> DatasetListing:
    """Read a Stanford Dogs folder into a DatasetListing (official split, union boxes)."""
    root = Path(root)
    for name, archive in ((TRAIN_LIST, "lists.tar"), (TEST_LIST, "lists.tar")):
        if not (root / name).is_file():
            raise DatasetError(
                f"Stanford Dogs layout: required file {name} is missing in {root} "
                f"(unpack {archive} into it)"
            )
    if not (root / IMAGES_DIR).is_dir():
        raise DatasetError(
            f"Stanford Dogs layout: folder {IMAGES_DIR}/ is missing in {root} "
            "(unpack images.tar into it)"
        )
    notes: list[str] = []
    with_boxes = (root / ANNOTATION_DIR).is_dir()
    if not with_boxes:
        notes.append(f"{ANNOTATION_DIR}/ absent: no object boxes")
    entries = _read_list(root, TRAIN_LIST, True, with_boxes)
    entries += _read_list(root, TEST_LIST, False, with_boxes)
    class_names = _class_names(entries)
    return build_listing(root, entries, class_names, source="stanford_dogs", notes=notes)


def class_name(folder: str) -> str:
    """``n02085620-Chihuahua`` -> ``Chihuahua (n02085620)``; other names are kept."""
    match = _WNID_FOLDER.fullmatch(folder)
    return f"{match.group(2)} ({match.group(1)})" if match else folder


def _read_list(root: Path, name: str, is_train: bool, with_boxes: bool) -> list[Entry]:
    """The entries of one official list, paths checked, annotations read."""
    mat = MatFile(root, name)
    files = mat.vector("file_list")
    labels = mat.vector("labels")
    annotations = mat.vector("annotation_list") if mat.has("annotation_list") else None
    for other, values in (("labels", labels), ("annotation_list", annotations)):
        if values is not None and len(values) != len(files):
            raise DatasetError(
                f"{name}: file_list has {len(files)} entries but {other} has {len(values)}"
            )
    if not files:
        raise DatasetError(f"{name}: lists no images")
    entries = []
    for number, value in enumerate(files, start=1):
        where = f"{name}: entry {number}"
        relative = mat.text(value, number, "file_list")
        if len(PurePosixPath(relative).parts) < 2:
            raise mat.error(
                number, f"file_list path '{relative}' is not '<class folder>/<image file>'"
            )
        path = listed_path(root, f"{IMAGES_DIR}/{relative}", where)
        label = mat.positive_integer(labels[number - 1], number, "label")
        boxes, box_where = None, ""
        if with_boxes:
            annotation = (
                mat.text(annotations[number - 1], number, "annotation_list")
                if annotations is not None
                else str(PurePosixPath(relative).with_suffix(""))
            )
            box_where = f"{ANNOTATION_DIR}/{annotation}"
            boxes = _read_voc(root, box_where, where)
        entries.append(Entry(where, path, label, is_train, boxes, box_where))
    return entries


def _read_voc(root: Path, relative: str, where: str) -> tuple[Corners, ...]:
    """The corners of every ``<object><bndbox>`` of one Pascal VOC annotation file."""
    path = resolve_inside(root, relative, listing=where)
    if not path.is_file():
        raise DatasetError(f"{where}: annotation {relative} is missing")
    try:
        tree = ElementTree.fromstring(path.read_bytes())
    except ElementTree.ParseError as exc:
        line, column = exc.position
        raise DatasetError(
            f"{relative}: not valid Pascal VOC XML (line {line}, column {column})"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{relative}: cannot read ({exc.strerror or exc})") from None
    boxes = []
    for number, obj in enumerate(tree.findall("object"), start=1):
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{relative}: object {number}: no <bndbox>")
        values = tuple(
            _coordinate(box, tag, f"{relative}: object {number}")
            for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        boxes.append(corners(values, f"{relative}: object {number}"))
    if not boxes:
        raise DatasetError(f"{relative}: no <object> with a <bndbox>")
    return tuple(boxes)


def _coordinate(box: ElementTree.Element, tag: str, where: str) -> float:
    text = box.findtext(tag)
    if text is None:
        raise DatasetError(f"{where}: <bndbox> has no <{tag}>")
    try:
        return float(text.strip())
    except ValueError:
        raise DatasetError(f"{where}: <{tag}> '{text.strip()}' is not a number") from None


def _class_names(entries: list[Entry]) -> tuple[str, ...]:
    """Names by label (index = label - 1): each label one folder, each folder one label."""
    folder_of: dict[int, tuple[str, Entry]] = {}
    label_of: dict[str, tuple[int, Entry]] = {}
    for entry in entries:
        folder = PurePosixPath(entry.path).parts[1]
        known = folder_of.setdefault(entry.label, (folder, entry))
        if known[0] != folder:
            raise DatasetError(
                f"{entry.where}: label {entry.label} is given to folder '{folder}' but "
                f"also to '{known[0]}' ({known[1].where})"
            )
        seen = label_of.setdefault(folder, (entry.label, entry))
        if seen[0] != entry.label:
            raise DatasetError(
                f"{entry.where}: folder '{folder}' has label {entry.label} but "
                f"label {seen[0]} at {seen[1].where}"
            )
    count = max(folder_of)
    gaps = [label for label in range(1, count + 1) if label not in folder_of]
    if gaps:
        raise DatasetError(
            f"{TRAIN_LIST}, {TEST_LIST}: labels must run 1..{count} without gaps; "
            f"no image has label {gaps[0]}"
        )
    return tuple(class_name(folder_of[label][0]) for label in range(1, count + 1))
