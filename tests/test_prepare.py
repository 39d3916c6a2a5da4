"""prepare: splits, duplicates, rejects and the images index."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import layout
from pipeline.errors import DatasetError
from pipeline.params import DataParams
from pipeline.prepare import (
    Decoded,
    DecodedTable,
    assign_splits,
    remove_duplicates,
    run_prepare,
)
from pipeline.records import ImageRecord, RecordTable
from pipeline.tables import SPLITS, read_table


def records(n_per_class: int, classes: int, test_every: int = 4) -> list[ImageRecord]:
    out = []
    for c in range(classes):
        for i in range(n_per_class):
            image_id = c * n_per_class + i + 1
            out.append(
                ImageRecord(image_id, f"images/{c}/{i}.png", c, is_train=(i % test_every != 0))
            )
    return out


def split_of(
    recs: list[ImageRecord], names: tuple[str, ...], val_fraction: float, seed: int
) -> dict[int, str]:
    """assign_splits on the records' columns, as image id -> split name."""
    codes = assign_splits(
        np.array([r.image_id for r in recs]),
        np.array([r.class_id for r in recs]),
        np.array([r.is_train for r in recs]),
        names,
        val_fraction,
        seed,
    )
    return {r.image_id: SPLITS[c] for r, c in zip(recs, codes.tolist(), strict=True)}


def test_val_is_stratified_seeded_and_carved_from_train() -> None:
    recs = records(20, 3)
    names = ("a", "b", "c")
    split = split_of(recs, names, 0.25, seed=7)
    assert split == split_of(list(reversed(recs)), names, 0.25, seed=7)
    assert split != split_of(recs, names, 0.25, seed=8)
    for c in range(3):
        mine = [r for r in recs if r.class_id == c]
        train = [r for r in mine if r.is_train]
        val = [r for r in mine if split[r.image_id] == "val"]
        assert len(val) == round(0.25 * len(train))
        assert all(r.is_train for r in val)  # test untouched
        assert all(split[r.image_id] == "test" for r in mine if not r.is_train)


def test_every_class_keeps_a_training_image() -> None:
    recs = [
        ImageRecord(1, "a.png", 0, True),
        ImageRecord(2, "b.png", 1, True),
        ImageRecord(3, "c.png", 1, True),
    ]
    split = split_of(recs, ("a", "b"), 0.49, seed=0)
    assert split[1] == "train"
    assert sorted(split[i] for i in (2, 3)) == ["train", "val"]


def test_a_class_without_training_images_is_an_error() -> None:
    recs = [ImageRecord(1, "a.png", 0, True), ImageRecord(2, "b.png", 1, False)]
    with pytest.raises(DatasetError, match="no training image.*b"):
        split_of(recs, ("a", "b"), 0.1, seed=0)


def test_duplicates_keep_the_training_copy() -> None:
    recs = [
        ImageRecord(1, "x.png", 0, False),
        ImageRecord(2, "y.png", 0, True),
        ImageRecord(3, "z.png", 0, True),
        ImageRecord(4, "w.png", 0, False),
    ]
    same, other, third = "ab" * 16, "ab" * 15 + "ac", "00" * 16
    decoded = DecodedTable.of([Decoded(4, 4, h) for h in (same, same, other, third)])
    table = RecordTable(recs)
    kept, dups = remove_duplicates(table, np.arange(4), decoded)
    assert [table[r].image_id for r in kept] == [2, 3, 4]
    assert decoded.pixel_hash(2) == other
    assert dups == [
        {
            "image_id": 1,
            "path": "x.png",
            "dataset_split": "test",
            "kept_image_id": 2,
            "kept_path": "y.png",
            "kept_split": "train",
        }
    ]


def write_png(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size + 2, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.fixture
def folder_project(tmp_path: Path) -> tuple[Path, DataParams]:
    root = tmp_path / "photos"
    for c, name in enumerate(["crow", "finch"]):
        for i in range(10):
            write_png(root / name / f"{i:02d}.png", seed=100 * c + i)
    data = DataParams(
        source="folder", root="photos", test_fraction=0.3, val_fraction=0.2, max_reject_fraction=0.2
    )
    return tmp_path, data


def test_prepare_writes_index_rejects_duplicates_and_metrics(folder_project) -> None:
    project, data = folder_project
    root = project / "photos"
    (root / "crow" / "99.png").write_bytes(b"")  # empty file
    (root / "finch" / "98.jpg").write_bytes(b"GIF89a broken")  # not an image
    (root / "finch" / "97.png").write_bytes((root / "finch" / "00.png").read_bytes())
    metrics = run_prepare(data, project)

    table, info = read_table(project / layout.IMAGES_INDEX, "images")
    rows = table.to_pylist()
    assert info["facts"]["class_names"] == ["crow", "finch"]
    assert metrics["rejects"] == 2 and metrics["duplicates_removed"] == 1
    assert metrics["images"] == len(rows) == 20
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["width"] == 14 and r["height"] == 12 for r in rows)
    assert len({r["pixel_hash"] for r in rows}) == len(rows)  # no photo twice
    rejects = read_table(project / layout.REJECTS_TABLE, "rejects")[0].to_pylist()
    assert sorted(r["path"] for r in rejects) == ["crow/99.png", "finch/98.jpg"]
    assert all(r["reason"] for r in rejects)
    dups = read_table(project / layout.DUPLICATES_TABLE, "duplicates")[0].to_pylist()
    assert {dups[0]["path"], dups[0]["kept_path"]} == {"finch/97.png", "finch/00.png"}
    saved = json.loads((project / layout.PREPARE_METRICS).read_text())
    assert saved == metrics


def test_prepare_is_deterministic(folder_project) -> None:
    project, data = folder_project
    run_prepare(data, project)
    first = (project / layout.IMAGES_INDEX).read_bytes()
    run_prepare(data, project)
    assert (project / layout.IMAGES_INDEX).read_bytes() == first
    run_prepare(replace(data, seed=1), project)
    assert (project / layout.IMAGES_INDEX).read_bytes() != first


def test_too_many_rejects_fail_with_the_table_written(folder_project) -> None:
    project, data = folder_project
    for i in range(6):
        (project / "photos" / "crow" / f"bad{i}.png").write_bytes(b"not a png")
    with pytest.raises(
        DatasetError,
        match=r"6 of 26 images could not be decoded .*"
        r"max_reject_fraction 0.2",
    ):
        run_prepare(data, project)
    assert len(read_table(project / layout.REJECTS_TABLE, "rejects")[0]) == 6
    assert not (project / layout.IMAGES_INDEX).exists()


def test_too_long_a_root_for_the_filesystem_is_one_line(tmp_path: Path) -> None:
    from pipeline.datasets import read_dataset

    with pytest.raises(DatasetError, match="data.root '.*' cannot be read \\(File name too long"):
        read_dataset("folder", tmp_path / ("x" * 300), test_fraction=0.3, seed=0)


# ------------------------------------------------------- labels come from real folders
def test_a_link_to_another_class_is_a_reject_not_a_label(folder_project) -> None:
    project, data = folder_project
    root = project / "photos"
    os.symlink(root / "finch", root / "crow" / "finches")
    metrics = run_prepare(data, project)
    rows = read_table(project / layout.IMAGES_INDEX, "images")[0].to_pylist()
    assert {(r["path"].split("/")[0], r["class_name"]) for r in rows} == {
        ("crow", "crow"),
        ("finch", "finch"),
    }
    assert len(rows) == 20 and metrics["links_rejected"] == 1 and metrics["rejects"] == 0
    rejects = read_table(project / layout.REJECTS_TABLE, "rejects")[0].to_pylist()
    assert rejects == [
        {
            "image_id": 21,
            "path": "crow/finches",
            "reason": "symlink to 'finch', outside class folder 'crow': not read as class 'crow'",
        }
    ]


# ---------------------------------------------------------------- refusals
def test_a_single_class_is_refused_before_decoding(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(6):
        write_png(root / "crow" / f"{i}.png", seed=i)
    data = DataParams(source="folder", root="photos")
    with pytest.raises(DatasetError) as info:
        run_prepare(data, tmp_path)
    assert str(info.value) == (
        f"{root}: found 1 class ('crow'); prepare needs at least 2 "
        "classes (one folder per class: <root>/<class>/<image>)"
    )
    assert not (tmp_path / layout.REJECTS_TABLE).exists()


@pytest.mark.parametrize("val_fraction", [0.0, 0.05])
def test_an_empty_validation_split_names_the_key(folder_project, val_fraction: float) -> None:
    project, data = folder_project
    with pytest.raises(DatasetError) as info:
        run_prepare(replace(data, val_fraction=val_fraction), project)
    assert str(info.value) == (
        f"data.val_fraction {val_fraction:g} leaves the validation split empty (14 training "
        f"images in 2 classes; each class moves round({val_fraction:g} x its training images) "
        "to validation and keeps one for training): raise data.val_fraction (below 0.5) or "
        "add training images"
    )
    assert not (project / layout.IMAGES_INDEX).exists()


def test_an_empty_test_split_of_class_folders_names_the_key(folder_project) -> None:
    project, data = folder_project
    with pytest.raises(
        DatasetError,
        match=r"^the test split is empty: data.test_fraction 0.04 "
        r"of each class rounds to 0 images .*raise "
        r"data.test_fraction or add images$",
    ):
        run_prepare(replace(data, test_fraction=0.04), project)


def cub_project(tmp_path: Path, split: list[int], *, duplicate_test: bool = False) -> Path:
    """A 2-class CUB folder of len(split) images per class; split: 1 train, 0 test."""
    root = tmp_path / "cub"
    lines: dict[str, list[str]] = {"images": [], "labels": [], "split": []}
    image_id = 0
    for c in (1, 2):
        for i, flag in enumerate(split):
            image_id += 1
            rel = f"{c:03d}.c/{i}.png"
            seed = 100 * c + (0 if duplicate_test and not flag else i)
            write_png(root / "images" / rel, seed=seed)
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {c}")
            lines["split"].append(f"{image_id} {flag}")
    for name, key in (
        ("images.txt", "images"),
        ("image_class_labels.txt", "labels"),
        ("train_test_split.txt", "split"),
    ):
        (root / name).write_text("\n".join(lines[key]) + "\n")
    (root / "classes.txt").write_text("1 001.c\n2 002.c\n")
    return root


@pytest.mark.parametrize(
    "split, duplicate_test, message",
    [
        (
            [1, 1, 1, 1],
            False,
            "the test split is empty: train_test_split.txt marks no kept image "
            "as test (0): mark some as test",
        ),
        (
            [1, 1, 1, 0],
            True,
            "the test split is empty: train_test_split.txt marks no kept image "
            "as test (0): mark some as test; 2 test images were duplicates of "
            "training images",
        ),
        (
            [0, 0, 0, 0],
            False,
            "the train split is empty: train_test_split.txt marks no kept image "
            "as training (1): mark the training images with 1",
        ),
    ],
)
def test_an_empty_cub_split_names_the_file(
    tmp_path: Path, split: list[int], duplicate_test: bool, message: str
) -> None:
    cub_project(tmp_path, split, duplicate_test=duplicate_test)
    data = DataParams(source="cub", root="cub", val_fraction=0.3)
    with pytest.raises(DatasetError) as info:
        run_prepare(data, tmp_path)
    assert str(info.value) == message


# ------------------------------------------------------- segmentation ground truth
def test_unreadable_segmentations_are_recorded_and_their_images_kept(tmp_path: Path) -> None:
    from pipeline.params import SyntheticParams
    from pipeline.synthetic import generate_synthetic

    root = tmp_path / "data" / "synthetic"
    generate_synthetic(root, SyntheticParams(num_classes=2, images_per_class=5, image_size=64))
    names = sorted((root / "segmentations").rglob("*.png"))
    names[0].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    names[3].write_bytes(names[3].read_bytes()[:60])  # truncated
    metrics = run_prepare(DataParams(val_fraction=0.3), tmp_path)
    rows = read_table(tmp_path / layout.IMAGES_INDEX, "images")[0].to_pylist()
    assert len(rows) == 10 and metrics["images"] == 10
    bad = {n.relative_to(root).as_posix() for n in (names[0], names[3])}
    assert {
        r["path"].replace("images/", "segmentations/", 1)
        for r in rows
        if r["segmentation_path"] is None
    } == bad
    assert metrics["segmentations_rejected"] == 2 and metrics["with_segmentation"] == 8
    rejects = read_table(tmp_path / layout.REJECTS_TABLE, "rejects")[0].to_pylist()
    assert {r["path"] for r in rejects} == bad
    assert all(
        r["reason"].startswith("segmentation mask: ")
        and r["reason"].endswith("; the image is kept without object ground truth")
        for r in rejects
    )
    assert metrics["rejects"] == 0
