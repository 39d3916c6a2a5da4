"""Dataset readers on small fixtures: CUB layout (valid and malformed) and class folders."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest

from pipeline.datasets import read_cub, read_dataset, read_folder
from pipeline.errors import DatasetError, UnsafePathError
from pipeline.records import PartLocation

# ------------------------------------------------------------------ CUB fixtures

CUB_FILES = {
    "images.txt": (
        "1 001.Red_bird/red_1.jpg\n"
        "2 001.Red_bird/red_2.jpg\n"
        "\n"
        "3 002.Blue_bird/blue_1.jpg\n"
        "4 002.Blue_bird/blue_2.jpg\n"
    ),
    "classes.txt": "1 001.Red_bird\n2 002.Blue_bird\n",
    "image_class_labels.txt": "1 1\n2 1\n3 2\n4 2\n",
    "train_test_split.txt": "1 1\r\n2 0\r\n3 1\r\n4 0\r\n",
    "bounding_boxes.txt": (
        "1 1.0 2.0 30.5 40.0\n2 0.0 0.0 10.0 10.0\n3 5.5 6.5 7.5 8.5\n4 1 1 2 2\n"
    ),
    "parts/parts.txt": "1 left eye\n2 tail\n",
    "parts/part_locs.txt": (
        "1 2 10.0 11.0 1\n1 1 3.0 4.0 1\n"
        "2 1 0.0 0.0 0\n2 2 5.0 6.0 1\n"
        "3 1 7.0 8.0 1\n3 2 0.0 0.0 0\n"
        "4 1 1.5 2.5 1\n4 2 3.5 4.5 1\n"
    ),
}
SEGMENTED = ("001.Red_bird/red_1.png", "001.Red_bird/red_2.png", "002.Blue_bird/blue_1.png")


def write_cub(
    root: Path, *, replace: Optional[dict[str, Optional[str]]] = None, segmentations: bool = True
) -> Path:
    """Write the small CUB fixture; ``replace`` swaps file contents (None deletes)."""
    files = {**CUB_FILES, **(replace or {})}
    (root / "images").mkdir(parents=True)
    for name, content in files.items():
        if content is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(content, newline="")
    if segmentations:
        for relative in SEGMENTED:
            (root / "segmentations" / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / "segmentations" / relative).write_bytes(b"png")
    return root


def cub_error(tmp_path: Path, replace: dict[str, Optional[str]]) -> str:
    """The DatasetError message for the fixture with some files replaced."""
    root = write_cub(tmp_path / "cub", replace=replace)
    with pytest.raises(DatasetError) as caught:
        read_cub(root)
    return str(caught.value)


# -------------------------------------------------------------------- valid CUB


def test_valid_cub_folder_is_read_fully(tmp_path: Path) -> None:
    listing = read_cub(write_cub(tmp_path / "cub"))
    assert listing.source == "cub"
    assert listing.class_names == ("001.Red_bird", "002.Blue_bird")
    assert listing.part_names == ("left eye", "tail")
    assert [record.image_id for record in listing.records] == [1, 2, 3, 4]
    first, second, third, fourth = listing.records
    assert first.path == "images/001.Red_bird/red_1.jpg"
    assert [record.class_id for record in listing.records] == [0, 0, 1, 1]
    assert [record.is_train for record in listing.records] == [True, False, True, False]
    assert first.object_box_xywh == (1.0, 2.0, 30.5, 40.0)
    assert fourth.object_box_xywh == (1.0, 1.0, 2.0, 2.0)
    assert first.parts == (PartLocation(1, 3.0, 4.0, True), PartLocation(2, 10.0, 11.0, True))
    assert second.parts == (PartLocation(1, 0.0, 0.0, False), PartLocation(2, 5.0, 6.0, True))
    assert first.segmentation_path == "segmentations/001.Red_bird/red_1.png"
    assert third.segmentation_path == "segmentations/002.Blue_bird/blue_1.png"
    assert fourth.segmentation_path is None
    assert any("1 of 4 images have no mask" in note for note in listing.notes)


def test_optional_files_absent_leave_fields_empty_with_notes(tmp_path: Path) -> None:
    root = write_cub(
        tmp_path / "cub",
        segmentations=False,
        replace={"bounding_boxes.txt": None, "parts/parts.txt": None, "parts/part_locs.txt": None},
    )
    listing = read_cub(root)
    assert listing.part_names is None
    for record in listing.records:
        assert record.object_box_xywh is None and record.parts is None
        assert record.segmentation_path is None
    notes = " | ".join(listing.notes)
    assert "bounding_boxes.txt" in notes and "parts" in notes and "segmentations" in notes


def test_part_names_without_locations(tmp_path: Path) -> None:
    listing = read_cub(write_cub(tmp_path / "cub", replace={"parts/part_locs.txt": None}))
    assert listing.part_names == ("left eye", "tail")
    assert all(record.parts is None for record in listing.records)
    assert any("part_locs.txt absent" in note for note in listing.notes)


def test_classes_may_be_listed_out_of_order(tmp_path: Path) -> None:
    listing = read_cub(
        write_cub(tmp_path / "cub", replace={"classes.txt": "2 002.Blue_bird\n1 001.Red_bird\n"})
    )
    assert listing.class_names == ("001.Red_bird", "002.Blue_bird")


# ---------------------------------------------------------------- malformed CUB


@pytest.mark.parametrize(
    "name", ["images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt"]
)
def test_missing_required_file(tmp_path: Path, name: str) -> None:
    root = write_cub(tmp_path / "cub", replace={name: None})
    with pytest.raises(DatasetError, match=f"required file {name} is missing"):
        read_cub(root)


def test_wrong_field_count(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"image_class_labels.txt": "1 1\n2 1 7\n3 2\n4 2\n"})
    assert message.startswith("image_class_labels.txt line 2: expected 2 fields")


def test_non_number_id(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"images.txt": "1 a/x.jpg\n\nx2 a/y.jpg\n"})
    assert message == "images.txt line 3: image id 'x2' is not a positive integer"


def test_non_number_coordinate(tmp_path: Path) -> None:
    boxes = "1 1 2 3 4\n2 1 2 three 4\n3 1 1 1 1\n4 1 1 1 1\n"
    message = cub_error(tmp_path, {"bounding_boxes.txt": boxes})
    assert message == "bounding_boxes.txt line 2: width 'three' is not a number"


def test_empty_box(tmp_path: Path) -> None:
    boxes = "1 1 2 3 4\n2 1 2 0 4\n3 1 1 1 1\n4 1 1 1 1\n"
    message = cub_error(tmp_path, {"bounding_boxes.txt": boxes})
    assert message.startswith("bounding_boxes.txt line 2: box width and height must be > 0")


def test_visible_not_zero_or_one(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"parts/part_locs.txt": "1 1 3.0 4.0 1\n1 2 3.0 4.0 2\n"})
    assert message == "parts/part_locs.txt line 2: visible must be 0 or 1, got '2'"


def test_split_not_zero_or_one(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"train_test_split.txt": "1 1\n2 0\n3 yes\n4 0\n"})
    assert message == "train_test_split.txt line 3: is_training_image must be 0 or 1, got 'yes'"


def test_duplicate_image_id(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"images.txt": "1 a/x.jpg\n2 a/y.jpg\n1 a/z.jpg\n"})
    assert message == "images.txt line 3: image id 1 is listed twice (first at line 1)"


def test_duplicate_image_path(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"images.txt": "1 a/x.jpg\n2 a/./x.jpg\n3 a/y.jpg\n4 a/z.jpg\n"})
    assert message.startswith("images.txt line 2: path 'a/./x.jpg' is listed twice")


def test_duplicate_label(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"image_class_labels.txt": "1 1\n2 1\n3 2\n4 2\n2 2\n"})
    assert message == "image_class_labels.txt line 5: image id 2 is listed twice (first at line 2)"


def test_label_for_unknown_image(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"image_class_labels.txt": "1 1\n2 1\n3 2\n4 2\n\n\n12 1\n"})
    assert message == "image_class_labels.txt line 7: image id 12 is not listed in images.txt"


def test_image_without_label(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"image_class_labels.txt": "1 1\n2 1\n4 2\n"})
    assert message == "images.txt line 4: image id 3 has no entry in image_class_labels.txt"


def test_image_without_split(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"train_test_split.txt": "1 1\n3 1\n4 0\n"})
    assert message == "images.txt line 2: image id 2 has no entry in train_test_split.txt"


def test_label_with_unknown_class(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"image_class_labels.txt": "1 1\n2 3\n3 2\n4 2\n"})
    assert message == "image_class_labels.txt line 2: class id 3 is not listed in classes.txt"


def test_class_ids_with_a_gap(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"classes.txt": "1 001.Red_bird\n3 003.Green_bird\n"})
    assert message.startswith("classes.txt line 2: class id 3 breaks the numbering")


def test_duplicate_class_id(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"classes.txt": "1 001.Red_bird\n2 002.Blue_bird\n2 x\n"})
    assert message == "classes.txt line 3: class id 2 is listed twice (first at line 2)"


def test_part_id_not_in_parts(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"parts/part_locs.txt": "1 1 3.0 4.0 1\n1 3 3.0 4.0 1\n"})
    assert message == "parts/part_locs.txt line 2: part id 3 is not listed in parts/parts.txt"


def test_part_location_for_unknown_image(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"parts/part_locs.txt": "9 1 3.0 4.0 1\n"})
    assert message == "parts/part_locs.txt line 1: image id 9 is not listed in images.txt"


def test_duplicate_part_location(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"parts/part_locs.txt": "1 1 3.0 4.0 1\n1 1 5.0 4.0 1\n"})
    assert message == (
        "parts/part_locs.txt line 2: part 1 of image 1 is listed twice (first at line 1)"
    )


def test_part_locations_without_part_names(tmp_path: Path) -> None:
    message = cub_error(tmp_path, {"parts/parts.txt": None})
    assert "parts/part_locs.txt is present but parts/parts.txt is missing" in message


def test_listing_read_line_by_line_keeps_bom_line_ends_and_byte_offsets(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "cub")
    labels = "\ufeff1 1\r2 1\r\n\n3 2\n4 2"  # BOM, CR, CRLF, blank line, no final newline
    (root / "image_class_labels.txt").write_bytes(labels.encode("utf-8"))
    assert [r.class_id for r in read_cub(root).records] == [0, 0, 1, 1]
    (root / "classes.txt").write_bytes(b"1 a\n2 caf\xe9\n")
    with pytest.raises(DatasetError, match="classes.txt: not UTF-8 text .bad byte at offset 9."):
        read_cub(root)


def test_not_utf8(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "cub")
    (root / "classes.txt").write_bytes(b"1 caf\xe9\n2 x\n")
    with pytest.raises(DatasetError, match="classes.txt: not UTF-8"):
        read_cub(root)


@pytest.mark.parametrize(
    "bad_path,fragment",
    [
        ("../../etc/passwd.jpg", "escapes the dataset root"),
        ("a/../../x.jpg", "escapes the dataset root"),
        ("/etc/passwd", "is absolute"),
    ],
)
def test_paths_escaping_root_are_rejected(tmp_path: Path, bad_path: str, fragment: str) -> None:
    root = write_cub(tmp_path / "cub", replace={"images.txt": f"1 a/x.jpg\n2 {bad_path}\n"})
    with pytest.raises(UnsafePathError) as caught:
        read_cub(root)
    assert str(caught.value).startswith(f"images.txt line 2: path '{bad_path}'")
    assert fragment in str(caught.value)


def test_symlinked_image_folder_out_of_root_is_rejected(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "cub")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "images" / "001.Red_bird")
    with pytest.raises(UnsafePathError, match="images.txt line 1: .*escapes the dataset root"):
        read_cub(root)


# ---------------------------------------------------------------- class folders


def write_folder(root: Path, counts: dict[str, int], *, reverse: bool = False) -> Path:
    """Create ``counts[class]`` tiny image files per class, in forward or reverse order."""
    names = [
        f"{cls}/img_{index:02d}.jpg" for cls, count in counts.items() for index in range(count)
    ]
    for relative in reversed(names) if reverse else names:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"x")
    return root


def test_folder_layout_ids_classes_and_filters(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"zebra": 2, "apple": 1})
    (root / "apple" / "B.JPEG").write_bytes(b"x")
    (root / "apple" / "nested").mkdir()
    (root / "apple" / "nested" / "c.Png").write_bytes(b"x")
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "apple" / ".hidden.jpg").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(b"x")
    (root / "stray.jpg").write_bytes(b"x")
    listing = read_folder(root, test_fraction=0.0, seed=0)
    assert listing.source == "folder"
    assert listing.class_names == ("apple", "zebra")
    assert [(r.image_id, r.path, r.class_id) for r in listing.records] == [
        (1, "apple/B.JPEG", 0),
        (2, "apple/img_00.jpg", 0),
        (3, "apple/nested/c.Png", 0),
        (4, "zebra/img_00.jpg", 1),
        (5, "zebra/img_01.jpg", 1),
    ]
    assert all(record.is_train for record in listing.records)
    assert listing.records[0].parts is None and listing.records[0].object_box_xywh is None


def test_folder_split_is_stratified_and_keeps_a_train_image(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"a": 10, "b": 5, "c": 1, "d": 2})
    listing = read_folder(root, test_fraction=0.3, seed=4)
    tests = Counter(listing.class_names[r.class_id] for r in listing.records if not r.is_train)
    assert tests == Counter({"a": 3, "b": 2, "d": 1})  # round(1.5) = 2, c keeps its one image
    trains = Counter(listing.class_names[r.class_id] for r in listing.records if r.is_train)
    assert set(trains) == {"a", "b", "c", "d"}
    nearly_all = read_folder(root, test_fraction=0.95, seed=4)
    for class_id in range(4):
        assert any(r.is_train for r in nearly_all.records if r.class_id == class_id)


def test_folder_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"a": 20, "b": 20})
    first = read_folder(root, test_fraction=0.5, seed=7)
    assert read_folder(root, test_fraction=0.5, seed=7) == first
    other = read_folder(root, test_fraction=0.5, seed=8)
    assert [r.is_train for r in other.records] != [r.is_train for r in first.records]


def test_folder_listing_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    counts = {"b": 6, "a": 7, "c": 3}
    forward = read_folder(write_folder(tmp_path / "one", counts), test_fraction=0.4, seed=3)
    backward = read_folder(
        write_folder(tmp_path / "two", counts, reverse=True), test_fraction=0.4, seed=3
    )
    assert forward == backward


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        read_folder(tmp_path / "empty", test_fraction=0.2, seed=0)
    root = write_folder(tmp_path / "data", {"a": 2})
    (root / "bare").mkdir()
    (root / "bare" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="class folder 'bare' has no images"):
        read_folder(root, test_fraction=0.2, seed=0)


def test_folder_symlink_out_of_root_is_rejected(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"a": 2})
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "a" / "link.jpg")
    with pytest.raises(UnsafePathError, match="escapes the dataset root"):
        read_folder(root, test_fraction=0.2, seed=0)


def test_folder_symlink_loop_inside_root_is_walked_once(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"a": 2})
    os.symlink(root / "a", root / "a" / "again")
    listing = read_folder(root, test_fraction=0.0, seed=0)
    assert len(listing.records) == 2


def rejected(listing) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in listing.rejected]


def test_a_link_to_another_class_gives_no_label(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"crow": 2, "finch": 3})
    os.symlink(root / "finch", root / "crow" / "more")  # a folder link
    os.symlink(root / "finch" / "img_00.jpg", root / "crow" / "x.jpg")  # a file link
    listing = read_folder(root, test_fraction=0.0, seed=0)
    assert [(r.image_id, r.path, r.class_id) for r in listing.records] == [
        (1, "crow/img_00.jpg", 0),
        (2, "crow/img_01.jpg", 0),
        (3, "finch/img_00.jpg", 1),
        (4, "finch/img_01.jpg", 1),
        (5, "finch/img_02.jpg", 1),
    ]
    assert rejected(listing) == [
        ("crow/more", "symlink to 'finch', outside class folder 'crow': not read as class 'crow'"),
        (
            "crow/x.jpg",
            "symlink to 'finch/img_00.jpg', outside class folder 'crow': not read as class 'crow'",
        ),
    ]
    assert [e.image_id for e in listing.rejected] == [6, 7]


def test_a_link_to_the_dataset_root_gives_no_label(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"crow": 1, "finch": 1})
    os.symlink(root, root / "crow" / "all")
    os.symlink(root, root / "everything")  # as a class
    listing = read_folder(root, test_fraction=0.0, seed=0)
    assert listing.class_names == ("crow", "finch")
    assert [r.path for r in listing.records] == ["crow/img_00.jpg", "finch/img_00.jpg"]
    assert rejected(listing) == [
        ("crow/all", "symlink to '.', outside class folder 'crow': not read as class 'crow'"),
        ("everything", "symlink to the dataset root: not read as class 'everything'"),
    ]


def test_a_class_folder_linked_to_another_class_is_not_a_class(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"crow": 2, "finch": 1})
    (root / "crow" / "young").mkdir()
    (root / "crow" / "young" / "y.jpg").write_bytes(b"x")
    os.symlink(root / "crow", root / "raven")
    os.symlink(root / "crow" / "young", root / "chick")
    listing = read_folder(root, test_fraction=0.0, seed=0)
    assert listing.class_names == ("crow", "finch")
    assert [r.path for r in listing.records if r.class_id == 0] == [
        "crow/img_00.jpg",
        "crow/img_01.jpg",
        "crow/young/y.jpg",
    ]
    assert rejected(listing) == [
        (
            "chick",
            "symlink to 'crow/young', which overlaps class folder 'crow': not read as "
            "class 'chick'",
        ),
        (
            "raven",
            "symlink to 'crow', which overlaps class folder 'crow': not read as class 'raven'",
        ),
    ]


def test_links_that_stay_in_their_class_folder_are_read(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"crow": 1, "finch": 1})
    (root / ".store" / "owl").mkdir(parents=True)
    (root / ".store" / "owl" / "o.jpg").write_bytes(b"x")
    os.symlink(root / ".store" / "owl", root / "owl")  # a class stored elsewhere
    (root / "crow" / "sub").mkdir()
    (root / "crow" / "sub" / "s.jpg").write_bytes(b"x")
    os.symlink(root / "crow" / "sub", root / "crow" / "shortcut")  # inside its own class
    listing = read_folder(root, test_fraction=0.0, seed=0)
    assert listing.class_names == ("crow", "finch", "owl")
    assert [r.path for r in listing.records] == [
        "crow/img_00.jpg",
        "crow/sub/s.jpg",
        "finch/img_00.jpg",
        "owl/o.jpg",
    ]  # walked once
    assert listing.rejected == ()


def test_a_broken_link_is_rejected_not_skipped(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"crow": 1, "finch": 1})
    os.symlink(root / "crow" / "gone.jpg", root / "crow" / "link.jpg")
    listing = read_folder(root, test_fraction=0.0, seed=0)
    assert rejected(listing) == [
        ("crow/link.jpg", "broken symbolic link (its target does not exist)")
    ]


def test_a_class_left_with_links_only_names_them(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"crow": 1, "finch": 1})
    (root / "owl").mkdir()
    os.symlink(root / "crow" / "img_00.jpg", root / "owl" / "o.jpg")
    with pytest.raises(
        DatasetError,
        match="class folder 'owl' has no images .*; 1 link\\(s\\) in it lead out of it",
    ):
        read_folder(root, test_fraction=0.0, seed=0)


# ------------------------------------------------------------------- dispatcher


def test_read_dataset_dispatches(tmp_path: Path) -> None:
    cub_root = write_cub(tmp_path / "cub")
    assert read_dataset("cub", cub_root, test_fraction=0.2, seed=0).source == "cub"
    synthetic = read_dataset("synthetic", cub_root, test_fraction=0.2, seed=0)
    assert synthetic.source == "synthetic" and len(synthetic.records) == 4
    folder_root = write_folder(tmp_path / "data", {"a": 2})
    assert read_dataset("folder", folder_root, test_fraction=0.2, seed=0).source == "folder"


def test_read_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"data.root '{tmp_path / 'nope'}' does not exist"):
        read_dataset("cub", tmp_path / "nope", test_fraction=0.2, seed=0)
    with pytest.raises(DatasetError, match="data.source must be one of"):
        read_dataset("imagenet", tmp_path, test_fraction=0.2, seed=0)
