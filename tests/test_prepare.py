"""prepare: splits, duplicates, rejects and the images index."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import layout
from pipeline.errors import DatasetError
from pipeline.params import DataParams
from pipeline.prepare import Decoded, assign_splits, remove_duplicates, run_prepare
from pipeline.records import ImageRecord
from pipeline.tables import read_table


def records(n_per_class: int, classes: int, test_every: int = 4) -> list[ImageRecord]:
    out = []
    for c in range(classes):
        for i in range(n_per_class):
            image_id = c * n_per_class + i + 1
            out.append(ImageRecord(image_id, f"images/{c}/{i}.png", c,
                                   is_train=(i % test_every != 0)))
    return out


def test_val_is_stratified_seeded_and_carved_from_train() -> None:
    recs = records(20, 3)
    names = ("a", "b", "c")
    split = assign_splits(recs, names, 0.25, seed=7)
    assert split == assign_splits(list(reversed(recs)), names, 0.25, seed=7)
    assert split != assign_splits(recs, names, 0.25, seed=8)
    for c in range(3):
        mine = [r for r in recs if r.class_id == c]
        train = [r for r in mine if r.is_train]
        val = [r for r in mine if split[r.image_id] == "val"]
        assert len(val) == round(0.25 * len(train))
        assert all(r.is_train for r in val)                      # test untouched
        assert all(split[r.image_id] == "test" for r in mine if not r.is_train)


def test_every_class_keeps_a_training_image() -> None:
    recs = [ImageRecord(1, "a.png", 0, True), ImageRecord(2, "b.png", 1, True),
            ImageRecord(3, "c.png", 1, True)]
    split = assign_splits(recs, ("a", "b"), 0.49, seed=0)
    assert split[1] == "train"
    assert sorted(split[i] for i in (2, 3)) == ["train", "val"]


def test_a_class_without_training_images_is_an_error() -> None:
    recs = [ImageRecord(1, "a.png", 0, True), ImageRecord(2, "b.png", 1, False)]
    with pytest.raises(DatasetError, match="no training image.*b"):
        assign_splits(recs, ("a", "b"), 0.1, seed=0)


def test_duplicates_keep_the_training_copy() -> None:
    recs = [ImageRecord(1, "x.png", 0, False), ImageRecord(2, "y.png", 0, True),
            ImageRecord(3, "z.png", 0, True), ImageRecord(4, "w.png", 0, False)]
    decoded = {1: Decoded(4, 4, "same"), 2: Decoded(4, 4, "same"),
               3: Decoded(4, 4, "other"), 4: Decoded(4, 4, "third")}
    kept, dups = remove_duplicates(recs, decoded)
    assert [r.image_id for r in kept] == [2, 3, 4]
    assert dups == [{"image_id": 1, "path": "x.png", "dataset_split": "test",
                     "kept_image_id": 2, "kept_path": "y.png", "kept_split": "train"}]


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
    data = DataParams(source="folder", root="photos", test_fraction=0.3, val_fraction=0.2,
                      max_reject_fraction=0.2)
    return tmp_path, data


def test_prepare_writes_index_rejects_duplicates_and_metrics(folder_project) -> None:
    project, data = folder_project
    root = project / "photos"
    (root / "crow" / "99.png").write_bytes(b"")                       # empty file
    (root / "finch" / "98.jpg").write_bytes(b"GIF89a broken")           # not an image
    (root / "finch" / "97.png").write_bytes((root / "finch" / "00.png").read_bytes())
    metrics = run_prepare(data, project)

    table, info = read_table(project / layout.IMAGES_INDEX, "images")
    rows = table.to_pylist()
    assert info["facts"]["class_names"] == ["crow", "finch"]
    assert metrics["rejects"] == 2 and metrics["duplicates_removed"] == 1
    assert metrics["images"] == len(rows) == 20
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["width"] == 14 and r["height"] == 12 for r in rows)
    assert len({r["pixel_hash"] for r in rows}) == len(rows)           # no photo twice
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
    with pytest.raises(DatasetError, match=r"6 of 26 images could not be decoded .*"
                                           r"max_reject_fraction 0.2"):
        run_prepare(data, project)
    assert len(read_table(project / layout.REJECTS_TABLE, "rejects")[0]) == 6
    assert not (project / layout.IMAGES_INDEX).exists()
