"""Stanford Dogs and Stanford Cars readers on fixtures in the exact distributed formats
(MATLAB v5 cell and struct arrays, Pascal VOC XML), directly and through run_prepare."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline import layout
from pipeline.datasets import read_dataset, read_stanford_cars, read_stanford_dogs
from pipeline.datasets.stanford_dogs import class_name
from pipeline.errors import DatasetError, UnsafePathError
from pipeline.imageio import load_rgb
from pipeline.params import DataParams
from pipeline.prepare import run_prepare
from pipeline.tables import read_table
from tests.stanford_fixtures import (
    CAR_CLASSES,
    HEIGHT,
    WIDTH,
    Dog,
    car_rows,
    cells,
    default_dogs,
    struct_array,
    write_cars_all_in_one,
    write_cars_devkit,
    write_dog_list,
    write_dogs,
)

CHIHUAHUA = "Images/n02085620-Chihuahua/n02085620_101.jpg"


def dogs_error(root: Path) -> str:
    with pytest.raises(DatasetError) as caught:
        read_stanford_dogs(root)
    return str(caught.value)


def cars_error(root: Path) -> str:
    with pytest.raises(DatasetError) as caught:
        read_stanford_cars(root)
    return str(caught.value)


# ------------------------------------------------------------------ Stanford Dogs


def test_dogs_are_read_with_the_official_split_and_union_boxes(tmp_path: Path) -> None:
    listing = read_dataset(
        "stanford_dogs", write_dogs(tmp_path / "dogs"), test_fraction=0.3, seed=0
    )
    assert listing.source == "stanford_dogs"
    assert listing.class_names == ("Chihuahua (n02085620)", "Japanese_spaniel (n02085782)")
    assert listing.part_names is None
    records = listing.records
    assert [r.image_id for r in records] == list(range(1, 9))  # train list, then test list
    assert [r.is_train for r in records] == [True] * 6 + [False] * 2
    assert [r.class_id for r in records] == [0, 0, 0, 1, 1, 1, 0, 1]
    assert records[0].path == CHIHUAHUA
    # VOC (2,3)-(10,8) and (5,1)-(12,6), 1-based inclusive: union (2,1)-(12,8) -> x 1, y 0
    assert records[0].object_box_xywh == (1.0, 0.0, 11.0, 8.0)
    assert records[1].object_box_xywh == (1.0, 1.0, 9.0, 9.0)  # (2,2)-(10,10)
    # (15,4)-(21,16) ends one pixel past the 20-pixel-wide image: clamped to x 14..20
    assert records[4].object_box_xywh == (14.0, 3.0, 6.0, 13.0)
    assert all(r.parts is None and r.segmentation_path is None for r in records)
    notes = " | ".join(listing.notes)
    assert "1 object box(es) reached past their image and were clamped" in notes
    assert "n02085782-Japanese_spaniel/n02085782_202" in notes


def test_dogs_without_annotations_have_no_boxes(tmp_path: Path) -> None:
    listing = read_stanford_dogs(write_dogs(tmp_path / "dogs", annotations=False))
    assert all(r.object_box_xywh is None for r in listing.records)
    assert "Annotation/ absent: no object boxes" in listing.notes


def test_dogs_annotation_list_may_be_absent(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    train = [d for d in default_dogs() if d.train]
    write_dog_list(root / "lists/train_list.mat", train, annotation_list=None)
    assert read_stanford_dogs(root).records[0].object_box_xywh == (1.0, 0.0, 11.0, 8.0)


@pytest.mark.parametrize("name", ["lists/train_list.mat", "lists/test_list.mat"])
def test_dogs_missing_list(tmp_path: Path, name: str) -> None:
    root = write_dogs(tmp_path / "dogs")
    (root / name).unlink()
    assert dogs_error(root) == (
        f"Stanford Dogs layout: required file {name} is missing in {root} (unpack lists.tar into it)"
    )


def test_dogs_missing_images_folder(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    shutil.rmtree(root / "Images")
    assert "folder Images/ is missing" in dogs_error(root)


@pytest.mark.parametrize("content", [b"not a mat file at all" * 10, b""])
def test_a_malformed_mat_is_one_line_naming_it(tmp_path: Path, content: bytes) -> None:
    root = write_dogs(tmp_path / "dogs")
    (root / "lists/test_list.mat").write_bytes(content)
    message = dogs_error(root)
    assert message.startswith("lists/test_list.mat: not a readable MATLAB .mat file (")
    assert "\n" not in message


def test_a_v73_mat_asks_for_v5(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    (root / "lists/train_list.mat").write_bytes(header + b"\0" * 512)
    assert dogs_error(root) == (
        "lists/train_list.mat: a MATLAB v7.3 (HDF5) file; save it as a v5 .mat file (save -v7)"
    )


def test_dogs_path_escaping_the_root(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    dogs = [d for d in default_dogs() if d.train]
    files = [d.relative for d in dogs]
    files[1] = "n02085620-Chihuahua/../../../outside.jpg"
    write_dog_list(root / "lists/train_list.mat", dogs, file_list=cells(files))
    with pytest.raises(UnsafePathError) as caught:
        read_stanford_dogs(root)
    assert str(caught.value).startswith("lists/train_list.mat: entry 2: path 'Images/n02085620")
    assert str(caught.value).endswith("escapes the dataset root")


def test_dogs_class_folder_linking_out_of_the_root(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    folder = root / "Images" / "n02085782-Japanese_spaniel"
    shutil.move(folder, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", folder)
    with pytest.raises(UnsafePathError, match=r"entry 4: .*escapes the dataset root"):
        read_stanford_dogs(root)


def test_dogs_annotation_path_escaping_the_root(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    dogs = [d for d in default_dogs() if not d.train]
    write_dog_list(root / "lists/test_list.mat", dogs, annotation_list=cells(["../x", "/etc/y"]))
    with pytest.raises(UnsafePathError, match=r"^lists/test_list.mat: entry 1: path 'Annotation"):
        read_stanford_dogs(root)


def test_dogs_box_outside_the_image_is_an_error(tmp_path: Path) -> None:
    dogs = default_dogs()
    dogs[2].boxes = [(2, 2, 5, 5), (30, 2, 40, 9)]  # the second starts right of the 20 px
    message = dogs_error(write_dogs(tmp_path / "dogs", dogs))
    assert message == (
        "Annotation/n02085620-Chihuahua/n02085620_103: object 2: box x1 30 y1 2 x2 40 y2 9 "
        "lies outside the 20 x 16 image Images/n02085620-Chihuahua/n02085620_103.jpg"
    )


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<annotation><object>", "not valid Pascal VOC XML (line 1, column 20)"),
        ("<annotation><size/></annotation>", "no <object> with a <bndbox>"),
        ("<annotation><object><name>d</name></object></annotation>", "object 1: no <bndbox>"),
        (
            "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>x</xmax>"
            "<ymax>3</ymax></bndbox></object></annotation>",
            "object 1: <xmax> 'x' is not a number",
        ),
        (
            "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax>"
            "</bndbox></object></annotation>",
            "object 1: <bndbox> has no <ymax>",
        ),
        (
            "<annotation><object><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>3</xmax>"
            "<ymax>3</ymax></bndbox></object></annotation>",
            "object 1: box x1 5 y1 1 x2 3 y2 3 is empty (x2 must be >= x1 and y2 >= y1)",
        ),
    ],
)
def test_dogs_malformed_annotation_names_file_and_object(
    tmp_path: Path, xml: str, message: str
) -> None:
    root = write_dogs(tmp_path / "dogs")
    relative = "Annotation/n02085782-Japanese_spaniel/n02085782_203"
    (root / relative).write_text(xml)
    assert dogs_error(root) == f"{relative}: {message}"


def test_dogs_missing_annotation_names_the_entry(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    (root / "Annotation/n02085620-Chihuahua/n02085620_104").unlink()
    assert dogs_error(root) == (
        "lists/test_list.mat: entry 1: annotation "
        "Annotation/n02085620-Chihuahua/n02085620_104 is missing"
    )


def test_dogs_path_listed_in_both_splits(tmp_path: Path) -> None:
    dogs = default_dogs()
    root = write_dogs(tmp_path / "dogs", dogs)
    write_dog_list(root / "lists/test_list.mat", [dogs[0]])
    assert dogs_error(root) == (
        f"lists/test_list.mat: entry 1: path '{CHIHUAHUA}' is listed twice "
        "(first at lists/train_list.mat: entry 1)"
    )


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            [1, 1, 1, 1, 2, 2],
            "entry 4: label 1 is given to folder 'n02085782-Japanese_spaniel' but also to "
            "'n02085620-Chihuahua' (lists/train_list.mat: entry 1)",
        ),
        (
            [1, 1, 2, 2, 2, 2],
            "entry 3: folder 'n02085620-Chihuahua' has label 2 but label 1 at "
            "lists/train_list.mat: entry 1",
        ),
        ([1, 1.5, 1, 2, 2, 2], "entry 2: label 1.5 is not a positive integer"),
        ([1, 0, 1, 2, 2, 2], "entry 2: label 0 is not a positive integer"),
        ([1, 1, 1, 2, 2], "file_list has 6 entries but labels has 5"),
    ],
)
def test_dogs_labels_must_match_the_class_folders(
    tmp_path: Path, labels: list[float], message: str
) -> None:
    root = write_dogs(tmp_path / "dogs")
    train = [d for d in default_dogs() if d.train]
    array = np.array([[v] for v in labels], dtype=float)
    write_dog_list(root / "lists/train_list.mat", train, labels=array)
    assert message in dogs_error(root)


def test_dogs_labels_without_gaps(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    dogs = default_dogs()
    for name, train, labels in (("train", True, [1, 1, 1, 3, 3, 3]), ("test", False, [1, 3])):
        array = np.array([[v] for v in labels], dtype=float)
        chosen = [d for d in dogs if d.train == train]
        write_dog_list(root / f"lists/{name}_list.mat", chosen, labels=array)
    assert dogs_error(root) == (
        "lists/train_list.mat, lists/test_list.mat: labels must run 1..3 without gaps; "
        "no image has label 2"
    )


def test_dogs_list_without_a_variable_or_with_a_bad_cell(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    train = [d for d in default_dogs() if d.train]
    write_dog_list(root / "lists/train_list.mat", train, labels=None)
    assert dogs_error(root) == (
        "lists/train_list.mat: has no variable 'labels' (it holds: annotation_list, file_list)"
    )
    files = cells([d.relative for d in train])
    files[2, 0] = np.array([[1.0]])
    write_dog_list(root / "lists/train_list.mat", train, file_list=files)
    assert (
        dogs_error(root) == "lists/train_list.mat: entry 3: file_list is not text (found numbers)"
    )


def test_dogs_empty_list(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    empty = np.empty((0, 1), dtype=object)
    write_dog_list(root / "lists/test_list.mat", [], file_list=empty, annotation_list=empty)
    assert dogs_error(root) == "lists/test_list.mat: lists no images"


def test_class_names_keep_the_wnid() -> None:
    assert class_name("n02085620-Chihuahua") == "Chihuahua (n02085620)"
    assert class_name("n02086240-Shih-Tzu") == "Shih-Tzu (n02086240)"
    assert class_name("my_dogs") == "my_dogs"


# ------------------------------------------------------------------ Stanford Cars


def test_cars_devkit_layout(tmp_path: Path) -> None:
    listing = read_dataset(
        "stanford_cars", write_cars_devkit(tmp_path / "cars"), test_fraction=0.3, seed=0
    )
    assert listing.source == "stanford_cars" and listing.class_names == CAR_CLASSES
    records = listing.records
    assert [r.image_id for r in records] == list(range(1, 13))
    assert [r.path for r in records[:2]] == ["cars_train/00001.jpg", "cars_train/00002.jpg"]
    assert records[8].path == "cars_test/00001.jpg"
    assert [r.is_train for r in records] == [True] * 8 + [False] * 4
    assert [r.class_id for r in records[:4]] == [0, 1, 0, 1]
    assert records[0].object_box_xywh == (0.0, 1.0, 12.0, 15.0)  # (1,2)-(12,16)
    assert records[1].object_box_xywh == (1.0, 1.0, 12.0, 14.0)  # (2,2)-(13,15)


def test_cars_all_in_one_layout(tmp_path: Path) -> None:
    listing = read_stanford_cars(write_cars_all_in_one(tmp_path / "cars"))
    records = listing.records
    assert [r.image_id for r in records] == list(range(1, 13))
    assert records[0].path == "car_ims/000001.jpg"
    assert [r.is_train for r in records[:6]] == [True, True, False, True, True, False]
    assert records[2].object_box_xywh == (2.0, 1.0, 12.0, 15.0)  # (3,2)-(14,16)
    assert listing.class_names == CAR_CLASSES


def test_cars_test_labels_at_the_root_and_cells_of_structs(tmp_path: Path) -> None:
    root = write_cars_devkit(tmp_path / "cars")
    shutil.move(root / "devkit/cars_test_annos_withlabels.mat", root)
    rows = car_rows(8)
    for i, row in enumerate(rows):
        row["fname"] = f"{i + 1:05d}.jpg"
    scipy.io.savemat(root / "devkit/cars_train_annos.mat", {"annotations": rows})  # 1 x 8 cells
    listing = read_stanford_cars(root)
    assert len(listing.records) == 12 and listing.records[0].object_box_xywh == (0, 1, 12, 15)


def test_cars_both_layouts_read_the_all_in_one_file(tmp_path: Path) -> None:
    root = write_cars_devkit(tmp_path / "cars")
    write_cars_all_in_one(root)
    listing = read_stanford_cars(root)
    assert listing.records[0].path == "car_ims/000001.jpg"
    assert any("both layouts present" in note for note in listing.notes)


def test_cars_neither_layout_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cars").mkdir()
    message = cars_error(tmp_path / "cars")
    assert message.startswith(f"Stanford Cars: {tmp_path / 'cars'} holds neither layout (looked")
    assert "cars_annos.mat with car_ims/" in message and "devkit/cars_meta.mat" in message
    assert "\n" not in message


def test_cars_devkit_without_test_labels(tmp_path: Path) -> None:
    root = write_cars_devkit(tmp_path / "cars")
    (root / "devkit/cars_test_annos_withlabels.mat").rename(root / "devkit/cars_test_annos.mat")
    message = cars_error(root)
    assert message.startswith(
        "Stanford Cars devkit layout: devkit/cars_test_annos_withlabels.mat missing in"
    )
    assert "cars_test_annos.mat has none" in message


def test_cars_annos_without_the_images_folder(tmp_path: Path) -> None:
    root = write_cars_all_in_one(tmp_path / "cars")
    shutil.rmtree(root / "car_ims")
    assert "cars_annos.mat is present but folder car_ims/ is missing" in cars_error(root)


def test_cars_malformed_meta(tmp_path: Path) -> None:
    root = write_cars_devkit(tmp_path / "cars")
    (root / "devkit/cars_meta.mat").write_bytes(b"\x00" * 300)
    assert cars_error(root).startswith("devkit/cars_meta.mat: not a readable MATLAB .mat file (")


def test_cars_struct_without_a_field(tmp_path: Path) -> None:
    rows = car_rows(12)
    root = write_cars_all_in_one(tmp_path / "cars", rows)
    for row in rows:
        del row["test"]
    scipy.io.savemat(
        root / "cars_annos.mat",
        {"annotations": struct_array(rows), "class_names": cells(CAR_CLASSES, False)},
    )
    assert cars_error(root) == (
        "cars_annos.mat: entry 1: annotations has no field 'test' (its fields: "
        "bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, relative_im_path)"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"class": np.uint8(7)}, "entry 3: class 7 is not in class_names (2 classes)"),
        ({"class": np.uint8(0)}, "entry 3: class 0 is not a positive integer"),
        ({"test": np.uint8(2)}, "entry 3: test must be 0 or 1, got 2"),
        ({"bbox_x2": np.uint16(0)}, "entry 3: box x1 3 y1 2 x2 0 y2 16 is empty"),
        ({"bbox_x1": np.float64("nan")}, "entry 3: bbox_x1 nan is not a finite number"),
        ({"bbox_y1": "12"}, "entry 3: bbox_y1 is not a number (found text)"),
        (
            {"bbox_x1": np.uint16(21), "bbox_x2": np.uint16(25)},
            "entry 3: object 1: box x1 21 y1 2 x2 25 y2 16 lies outside the 20 x 16 image "
            "car_ims/000003.jpg",
        ),
    ],
)
def test_cars_bad_annotation_names_the_entry(tmp_path: Path, change: dict, message: str) -> None:
    rows = car_rows(12)
    rows[2].update(change)
    error = cars_error(write_cars_all_in_one(tmp_path / "cars", rows))
    assert error.startswith(f"cars_annos.mat: {message}")


def test_cars_path_escaping_the_root(tmp_path: Path) -> None:
    rows = car_rows(12)
    rows[1]["relative_im_path"] = "../outside.jpg"
    with pytest.raises(UnsafePathError) as caught:
        read_stanford_cars(write_cars_all_in_one(tmp_path / "cars", rows))
    assert str(caught.value) == (
        "cars_annos.mat: entry 2: path '../outside.jpg' escapes the dataset root"
    )


def test_cars_box_past_the_edge_is_clamped(tmp_path: Path) -> None:
    rows = car_rows(12)
    rows[0].update(bbox_x1=np.uint16(0), bbox_y2=np.uint16(40))
    listing = read_stanford_cars(write_cars_all_in_one(tmp_path / "cars", rows))
    assert listing.records[0].object_box_xywh == (0.0, 1.0, 12.0, 15.0)  # x -1 -> 0, y2 -> 16
    assert any(
        "1 object box(es)" in note and "cars_annos.mat: entry 1" in note for note in listing.notes
    )


def test_cars_duplicate_path(tmp_path: Path) -> None:
    rows = car_rows(12)
    rows[5]["relative_im_path"] = "car_ims/000001.jpg"
    assert cars_error(write_cars_all_in_one(tmp_path / "cars", rows)) == (
        "cars_annos.mat: entry 6: path 'car_ims/000001.jpg' is listed twice "
        "(first at cars_annos.mat: entry 1)"
    )


# ----------------------------------------------------------------- through prepare


def test_prepare_on_stanford_dogs(tmp_path: Path) -> None:
    root = write_dogs(tmp_path / "dogs")
    (root / "Images/n02085620-Chihuahua/n02085620_103.jpg").write_bytes(b"\xff\xd8 truncated")
    spaniel = root / "Images/n02085782-Japanese_spaniel"
    shutil.copy(spaniel / "n02085782_201.jpg", spaniel / "n02085782_204.jpg")  # test = train
    data = DataParams(
        source="stanford_dogs", root="dogs", val_fraction=0.3, max_reject_fraction=0.2
    )
    metrics = run_prepare(data, tmp_path)
    assert metrics["rejects"] == 1 and metrics["duplicates_removed"] == 1
    assert metrics["with_parts"] == 0 and metrics["with_segmentation"] == 0
    rows = {
        r["image_id"]: r
        for r in read_table(tmp_path / layout.IMAGES_INDEX, "images")[0].to_pylist()
    }
    assert sorted(rows) == [1, 2, 4, 5, 6, 7]
    assert rows[1]["object_box_xywh"] == [1.0, 0.0, 11.0, 8.0]
    assert rows[5]["object_box_xywh"] == [14.0, 3.0, 6.0, 13.0]
    assert rows[4]["class_name"] == "Japanese_spaniel (n02085782)"
    assert rows[7]["split"] == "test" and (rows[1]["width"], rows[1]["height"]) == (20, 16)
    assert sorted(r["split"] for r in rows.values()) == [
        "test",
        "train",
        "train",
        "train",
        "val",
        "val",
    ]
    rejects = read_table(tmp_path / layout.REJECTS_TABLE, "rejects")[0].to_pylist()
    assert [(r["image_id"], r["path"]) for r in rejects] == [
        (3, "Images/n02085620-Chihuahua/n02085620_103.jpg")
    ]
    dups = read_table(tmp_path / layout.DUPLICATES_TABLE, "duplicates")[0].to_pylist()
    assert [(d["image_id"], d["kept_image_id"], d["dataset_split"]) for d in dups] == [
        (8, 4, "test")
    ]


@pytest.mark.parametrize("writer", [write_cars_devkit, write_cars_all_in_one])
def test_prepare_on_stanford_cars(tmp_path: Path, writer) -> None:
    writer(tmp_path / "cars")
    data = DataParams(source="stanford_cars", root="cars", val_fraction=0.3)
    metrics = run_prepare(data, tmp_path)
    assert metrics["images"] == 12 and metrics["classes"] == 2 and metrics["test"] == 4
    assert metrics["val"] == 2 and metrics["rejects"] == 0
    table, info = read_table(tmp_path / layout.IMAGES_INDEX, "images")
    assert info["facts"]["class_names"] == list(CAR_CLASSES)
    assert info["facts"]["source"] == "stanford_cars"
    assert all(len(r["object_box_xywh"]) == 4 for r in table.to_pylist())


def test_dog_fixture_relative_paths() -> None:
    assert Dog(1, 7, True).relative == "n02085782-Japanese_spaniel/n02085782_7.jpg"


def test_exif_oriented_image_keeps_its_box_on_the_stored_pixels(tmp_path: Path) -> None:
    # The dog occupies stored columns 2..9, rows 3..10 (VOC corners 3 4 10 11); the JPEG
    # says "rotate 90 degrees clockwise to display" (orientation 6). Boxes refer to the
    # stored array, so the index's size and box and the decoded pixels must all be stored.
    dogs = default_dogs()
    dogs[0].boxes = [(3, 4, 10, 11)]
    root = write_dogs(tmp_path / "dogs", dogs)
    stored = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    stored[..., 2] = 255  # blue background
    stored[3:11, 2:10] = (255, 0, 0)  # the red dog
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / CHIHUAHUA, exif=exif, quality=100, subsampling=0)
    run_prepare(DataParams(source="stanford_dogs", root="dogs", val_fraction=0.3), tmp_path)
    row = read_table(tmp_path / layout.IMAGES_INDEX, "images")[0].to_pylist()[0]
    assert row["path"] == CHIHUAHUA and (row["width"], row["height"]) == (WIDTH, HEIGHT)
    x, y, w, h = (int(v) for v in row["object_box_xywh"])
    assert (x, y, w, h) == (2, 3, 8, 8)
    rgb = load_rgb(root / CHIHUAHUA)
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    inside = rgb[y : y + h, x : x + w].astype(int)
    assert (inside[..., 0] > 200).all() and (inside[..., 2] < 60).all()  # the box holds the dog
    outside = rgb.astype(int).copy()
    outside[y : y + h, x : x + w] = (0, 0, 255)
    assert (outside[..., 0] < 60).all()  # and nothing of it lies outside
