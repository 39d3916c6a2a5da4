"""Reader for Stanford Cars in either of the layouts it is distributed in.

- all-in-one: ``car_ims/`` (car_ims.tgz) and ``cars_annos.mat``: a struct array
  ``annotations`` (fields relative_im_path, e.g. ``car_ims/000001.jpg``, bbox_x1,
  bbox_y1, bbox_x2, bbox_y2, class, test) and ``class_names``. Image ids are the
  annotations' positions 1..N; ``test`` 1 is the test split.
- devkit: ``cars_train/``, ``cars_test/`` and ``devkit/`` (car_devkit.tgz) with
  ``cars_train_annos.mat``, ``cars_meta.mat`` (``class_names``) and the separately
  distributed ``cars_test_annos_withlabels.mat`` (in ``devkit/`` or the root); both
  annotation files hold a struct array ``annotations`` with fields bbox_x1, bbox_y1,
  bbox_x2, bbox_y2, class and fname (relative to cars_train/ or cars_test/). Image ids
  number the train annotations 1..N, then the test annotations.

The layout is detected from what is present (``cars_annos.mat`` first). Class ids follow
``class`` (1 is class 0) and must index ``class_names``. Boxes are MATLAB corners, 1-based
and inclusive (pipeline/datasets/annotated.py converts and checks them). Every problem
raises DatasetError naming the file and the 1-based entry.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.datasets.annotated import Entry, build_listing, corners, listed_path
from pipeline.datasets.matfiles import MatFile
from pipeline.errors import DatasetError
from pipeline.records import DatasetListing

ALL_IN_ONE = "cars_annos.mat"
ALL_IN_ONE_DIR = "car_ims"
TRAIN_ANNOS = "devkit/cars_train_annos.mat"
TEST_ANNOS = "devkit/cars_test_annos_withlabels.mat"
TEST_ANNOS_AT_ROOT = "cars_test_annos_withlabels.mat"
META = "devkit/cars_meta.mat"
TRAIN_DIR = "cars_train"
TEST_DIR = "cars_test"
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")

LOOKED_FOR = (
    f"looked for {ALL_IN_ONE} with {ALL_IN_ONE_DIR}/ (car_ims.tgz + cars_annos.mat), "
    f"or {TRAIN_DIR}/, {TEST_DIR}/ with {TRAIN_ANNOS}, {TEST_ANNOS} and {META} "
    "(cars_train.tgz, cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat)"
)


def read_stanford_cars(root: Path) -> DatasetListing:
    """Read a Stanford Cars folder (all-in-one or devkit layout) into a DatasetListing."""
    root = Path(root)
    notes: list[str] = []
    if (root / ALL_IN_ONE).is_file():
        if any((root / path).exists() for path in (TRAIN_DIR, "devkit")):
            notes.append(f"both layouts present: read {ALL_IN_ONE} (the devkit layout is ignored)")
        entries, class_names = _read_all_in_one(root)
    elif any((root / path).exists() for path in (TRAIN_DIR, TEST_DIR, "devkit")):
        entries, class_names = _read_devkit(root)
    else:
        raise DatasetError(f"Stanford Cars: {root} holds neither layout ({LOOKED_FOR})")
    return build_listing(root, entries, class_names, source="stanford_cars", notes=notes)


def _read_all_in_one(root: Path) -> tuple[list[Entry], tuple[str, ...]]:
    if not (root / ALL_IN_ONE_DIR).is_dir():
        raise DatasetError(
            f"Stanford Cars: {ALL_IN_ONE} is present but folder {ALL_IN_ONE_DIR}/ is missing "
            f"in {root} (unpack car_ims.tgz into it)"
        )
    mat = MatFile(root, ALL_IN_ONE)
    class_names = _class_names(mat)
    entries = []
    for number, record in enumerate(_annotations(mat, ("relative_im_path", "test")), start=1):
        relative = mat.text(record["relative_im_path"], number, "relative_im_path")
        test = mat.number(record["test"], number, "test")
        if test not in (0.0, 1.0):
            raise mat.error(number, f"test must be 0 or 1, got {test:g}")
        entries.append(_entry(root, mat, number, record, relative, not test, len(class_names)))
    return entries, class_names


def _read_devkit(root: Path) -> tuple[list[Entry], tuple[str, ...]]:
    test_annos = TEST_ANNOS if (root / TEST_ANNOS).is_file() else TEST_ANNOS_AT_ROOT
    required = {
        TRAIN_DIR + "/": (root / TRAIN_DIR).is_dir(),
        TEST_DIR + "/": (root / TEST_DIR).is_dir(),
        TRAIN_ANNOS: (root / TRAIN_ANNOS).is_file(),
        TEST_ANNOS: (root / test_annos).is_file(),
        META: (root / META).is_file(),
    }
    missing = [name for name, present in required.items() if not present]
    if missing:
        hint = (
            " (the test labels: the devkit's cars_test_annos.mat has none; get "
            "cars_test_annos_withlabels.mat into devkit/)"
            if TEST_ANNOS in missing
            else ""
        )
        raise DatasetError(
            f"Stanford Cars devkit layout: {', '.join(missing)} missing in {root}{hint}; "
            f"{LOOKED_FOR}"
        )
    class_names = _class_names(MatFile(root, META))
    entries = []
    for name, folder, is_train in ((TRAIN_ANNOS, TRAIN_DIR, True), (test_annos, TEST_DIR, False)):
        mat = MatFile(root, name)
        for number, record in enumerate(_annotations(mat, ("fname",)), start=1):
            relative = f"{folder}/{mat.text(record['fname'], number, 'fname')}"
            entries.append(_entry(root, mat, number, record, relative, is_train, len(class_names)))
    return entries, class_names


def _annotations(mat: MatFile, fields: tuple[str, ...]) -> list:
    records = mat.structs("annotations", (*BOX_FIELDS, "class", *fields))
    if not records:
        raise DatasetError(f"{mat.name}: annotations lists no images")
    return records


def _class_names(mat: MatFile) -> tuple[str, ...]:
    names = tuple(
        mat.text(value, number, "class_names")
        for number, value in enumerate(mat.vector("class_names"), start=1)
    )
    if not names:
        raise DatasetError(f"{mat.name}: class_names lists no classes")
    return names


def _entry(
    root: Path, mat: MatFile, number: int, record, relative: str, is_train: bool, classes: int
) -> Entry:
    """One annotation: its image path checked, class in range, box corners validated."""
    where = f"{mat.name}: entry {number}"
    label = mat.positive_integer(record["class"], number, "class")
    if label > classes:
        raise mat.error(number, f"class {label} is not in class_names ({classes} classes)")
    values = tuple(mat.number(record[field], number, field) for field in BOX_FIELDS)
    box = corners(values, where)
    path = listed_path(root, relative, where)
    return Entry(where, path, label, is_train, (box,), where)
