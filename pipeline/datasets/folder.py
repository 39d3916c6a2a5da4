"""Reader for the class-folder layout: ``root/<class>/<image>`` (subfolders allowed).

Classes are the non-hidden folders directly under the root, sorted by name; images
are the files with a known image extension anywhere below a class folder, sorted by
relative path. Hidden files and folders (name starting with '.') and files lying in
the root itself are ignored. The train/test split is stratified, seeded and
independent of the order in which the filesystem lists the files.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline.errors import DatasetError
from pipeline.imageio import resolve_inside
from pipeline.records import DatasetListing, ImageRecord

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def read_folder(root: Path, *, test_fraction: float, seed: int) -> DatasetListing:
    """List ``root/<class>/<image>`` with a seeded, stratified train/test split.

    Per class, ``round(test_fraction * n)`` images (halves round up) go to test, but
    at least one image always stays in train.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"class-folder dataset root '{root}' does not exist or is not a folder")

    class_names = _class_folders(root)
    if not class_names:
        raise DatasetError(f"{root}: no class folders found (expected <root>/<class>/<image>)")
    rng = np.random.default_rng(seed)
    records: list[ImageRecord] = []
    for class_id, class_name in enumerate(class_names):
        paths = _image_files(root, class_name)
        if not paths:
            raise DatasetError(f"{root}: class folder '{class_name}' has no images "
                               f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        test = _test_positions(len(paths), test_fraction, rng)
        for position, path in enumerate(paths):
            records.append(ImageRecord(image_id=len(records) + 1, path=path,
                                       class_id=class_id, is_train=position not in test))
    return DatasetListing(records=tuple(records), class_names=tuple(class_names),
                          source="folder")


def _class_folders(root: Path) -> list[str]:
    """Sorted names of the non-hidden folders in ``root``; a symlink out of it is refused."""
    names = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            resolve_inside(root, entry.name, listing=str(root))
            names.append(entry.name)
    return sorted(names)


def _image_files(root: Path, class_name: str) -> list[str]:
    """Sorted POSIX paths (relative to ``root``) of the images below one class folder."""
    found: list[str] = []
    visited: set[Path] = set()
    pending = [class_name]
    while pending:
        folder = pending.pop()
        resolved = resolve_inside(root, folder, listing=str(root))
        if resolved in visited:  # a symlink back to a folder already walked
            continue
        visited.add(resolved)
        with os.scandir(root / folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                relative = f"{folder}/{entry.name}"
                if entry.is_dir():
                    pending.append(relative)
                elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    resolve_inside(root, relative, listing=str(root))
                    found.append(relative)
    return sorted(found)


def _test_positions(count: int, test_fraction: float, rng: np.random.Generator) -> set[int]:
    """Positions (in sorted order) of the images of one class that go to test."""
    wanted = math.floor(test_fraction * count + 0.5)
    test_count = min(wanted, count - 1)
    order = rng.permutation(count)  # drawn even when test_count is 0: one stream per class
    return {int(position) for position in order[:test_count]}
