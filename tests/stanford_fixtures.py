"""Small Stanford Dogs and Stanford Cars folders in the exact distributed formats.

MATLAB v5 files are written with scipy.io.savemat as the originals hold them: N x 1 cell
arrays of char (Dogs ``file_list``, ``annotation_list``) with an N x 1 double ``labels``,
1 x N struct arrays (Cars ``annotations``, fields of MATLAB integer types) and a 1 x K
cell array ``class_names``. Dogs annotations are Pascal VOC XML files without extension.
Images are small noise JPEGs (distinct pixels), WIDTH x HEIGHT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.io
from PIL import Image

WIDTH, HEIGHT = 20, 16
DOG_FOLDERS = ("n02085620-Chihuahua", "n02085782-Japanese_spaniel")
CAR_CLASSES = ("AM General Hummer SUV 2000", "Acura RL Sedan 2012")


def write_image(path: Path, seed: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    """A noise JPEG of ``size`` (width, height); different seeds, different pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG", quality=95)


def cells(values: list, column: bool = True) -> np.ndarray:
    """A MATLAB cell array (N x 1, or 1 x N) holding ``values``."""
    array = np.empty((len(values), 1) if column else (1, len(values)), dtype=object)
    for i, value in enumerate(values):
        array.flat[i] = value
    return array


def struct_array(rows: list[dict]) -> np.ndarray:
    """A 1 x N MATLAB struct array with the fields of ``rows[0]``, in order."""
    names = list(rows[0]) if rows else ["fname"]
    array = np.empty((1, len(rows)), dtype=[(name, object) for name in names])
    for i, row in enumerate(rows):
        array[0, i] = tuple(row[name] for name in names)
    return array


# ------------------------------------------------------------------------ Dogs


@dataclass
class Dog:
    """One image of the Dogs fixture: its class folder index, split and VOC boxes."""

    folder: int  # index into DOG_FOLDERS; label = folder + 1
    number: int
    train: bool
    boxes: list[tuple[int, int, int, int]] = field(default_factory=lambda: [(2, 2, 10, 10)])

    @property
    def relative(self) -> str:
        """Path relative to Images/ (the list's file_list entry)."""
        wnid = DOG_FOLDERS[self.folder].split("-")[0]
        return f"{DOG_FOLDERS[self.folder]}/{wnid}_{self.number}.jpg"


def default_dogs() -> list[Dog]:
    """Two classes of four images: three train, one test; the first has two dogs."""
    dogs = []
    for folder in (0, 1):
        for number in range(1, 5):
            dogs.append(Dog(folder, 100 * (folder + 1) + number, train=number != 4))
    dogs[0].boxes = [(2, 3, 10, 8), (5, 1, 12, 6)]  # union: x1 2, y1 1, x2 12, y2 8
    dogs[5].boxes = [(15, 4, 21, 16)]  # one pixel past the right edge: clamped
    return dogs


def voc_xml(dog: Dog) -> str:
    """The Pascal VOC annotation of one image, as in Stanford Dogs' annotation.tar."""
    objects = "".join(
        "<object><name>dog</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>\n"
        for x1, y1, x2, y2 in dog.boxes
    )
    return (
        f"<annotation><folder>{dog.relative.split('/')[0]}</folder>"
        f"<filename>{Path(dog.relative).stem}</filename>"
        "<source><database>ImageNet database</database></source>"
        f"<size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>"
        f"<segment>0</segment>\n{objects}</annotation>\n"
    )


def write_dog_list(path: Path, dogs: list[Dog], **override) -> None:
    """One official list file; ``override`` replaces variables (None drops one)."""
    variables = {
        "file_list": cells([d.relative for d in dogs]),
        "annotation_list": cells([str(Path(d.relative).with_suffix("")) for d in dogs]),
        "labels": np.array([[d.folder + 1] for d in dogs], dtype=float),
    }
    variables.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {k: v for k, v in variables.items() if v is not None})


def write_dogs(root: Path, dogs: Optional[list[Dog]] = None, *, annotations: bool = True) -> Path:
    """Images/, Annotation/ and lists/ of the Dogs fixture under ``root``."""
    dogs = default_dogs() if dogs is None else dogs
    for seed, dog in enumerate(dogs):
        write_image(root / "Images" / dog.relative, seed)
        if annotations:
            xml = root / "Annotation" / Path(dog.relative).with_suffix("")
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(voc_xml(dog))
    write_dog_list(root / "lists" / "train_list.mat", [d for d in dogs if d.train])
    write_dog_list(root / "lists" / "test_list.mat", [d for d in dogs if not d.train])
    return root


# ------------------------------------------------------------------------ Cars


def car_rows(count: int = 8) -> list[dict]:
    """``count`` annotations alternating between the two classes, boxes inside the image."""
    return [
        {
            "bbox_x1": np.uint16(1 + i % 3),
            "bbox_y1": np.uint16(2),
            "bbox_x2": np.uint16(12 + i % 5),
            "bbox_y2": np.uint16(HEIGHT - i % 2),
            "class": np.uint8(1 + i % 2),
        }
        for i in range(count)
    ]


def write_cars_devkit(
    root: Path, train: Optional[list[dict]] = None, test: Optional[list[dict]] = None
) -> Path:
    """cars_train/, cars_test/ and devkit/ (test labels in devkit/), images included."""
    train = car_rows(8) if train is None else train
    test = car_rows(4) if test is None else test
    for folder, rows, offset in (("cars_train", train, 0), ("cars_test", test, 1000)):
        for i, row in enumerate(rows):
            row.setdefault("fname", f"{i + 1:05d}.jpg")
            write_image(root / folder / row["fname"], offset + i)
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "devkit/cars_train_annos.mat", {"annotations": struct_array(train)})
    scipy.io.savemat(
        root / "devkit/cars_test_annos_withlabels.mat", {"annotations": struct_array(test)}
    )
    scipy.io.savemat(root / "devkit/cars_meta.mat", {"class_names": cells(CAR_CLASSES, False)})
    return root


def write_cars_all_in_one(root: Path, rows: Optional[list[dict]] = None) -> Path:
    """car_ims/ and cars_annos.mat: every third image is test."""
    rows = car_rows(12) if rows is None else rows
    for i, row in enumerate(rows):
        row.setdefault("relative_im_path", f"car_ims/{i + 1:06d}.jpg")
        row.setdefault("test", np.uint8(1 if i % 3 == 2 else 0))
        write_image(root / row["relative_im_path"], 2000 + i)
    scipy.io.savemat(
        root / "cars_annos.mat",
        {"annotations": struct_array(rows), "class_names": cells(CAR_CLASSES, False)},
    )
    return root
