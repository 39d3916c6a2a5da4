"""Reader for the class-folder layout: ``root/<class>/<image>`` (subfolders allowed).

Classes are the non-hidden folders directly under the root, sorted by name; images
are the files with a known image extension anywhere below a class folder, sorted by
relative path. Hidden files and folders (name starting with '.') and files lying in
the root itself are ignored. A label comes only from the class folder an image really
lies in: a link leading out of its class folder (to another class, to the root) is not
followed but returned in ``DatasetListing.rejected`` (prepare's rejects table), and a
link out of the root is refused. The train/test split is stratified, seeded and
independent of the order in which the filesystem lists the files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline.errors import DatasetError
from pipeline.imageio import resolve_inside
from pipeline.records import DatasetListing, ImageRecord, RecordTable, RejectedEntry

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def read_folder(root: Path, *, test_fraction: float, seed: int) -> DatasetListing:
    """List ``root/<class>/<image>`` with a seeded, stratified train/test split.

    Per class, ``round(test_fraction * n)`` images (halves round up) go to test, but
    at least one image always stays in train. Links that would give an image the label of
    a folder it does not really lie in are not listed but returned as ``rejected``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"class-folder dataset root '{root}' does not exist or is not a folder")

    class_names, rejected = _class_folders(root)
    if not class_names:
        raise DatasetError(f"{root}: no class folders found (expected <root>/<class>/<image>)")
    rng = np.random.default_rng(seed)
    records = RecordTable()
    for class_id, class_name in enumerate(class_names):
        paths, links = _image_files(root, class_name)
        rejected.extend(links)
        if not paths:
            why = (
                f"; {len(links)} link(s) in it lead out of it and are not read as its images"
                if links
                else ""
            )
            raise DatasetError(
                f"{root}: class folder '{class_name}' has no images "
                f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}){why}"
            )
        test = _test_positions(len(paths), test_fraction, rng)
        for position, path in enumerate(paths):
            records.append(
                ImageRecord(
                    image_id=len(records) + 1,
                    path=path,
                    class_id=class_id,
                    is_train=position not in test,
                )
            )
    return DatasetListing(
        records=records,
        class_names=tuple(class_names),
        source="folder",
        rejected=tuple(
            RejectedEntry(len(records) + n, path, reason)
            for n, (path, reason) in enumerate(sorted(rejected), start=1)
        ),
    )


def _inside(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is the real path ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _shown(real: Path | str, root: Path) -> str:
    """A real path as the user sees it: relative to the dataset root ('.' for the root)."""
    return os.path.relpath(real, os.path.realpath(root))


def _class_folders(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Sorted names of the non-hidden folders in ``root`` that are classes of their own,
    and (path, reason) of the folder links that are not.

    A link out of ``root`` is refused (UnsafePathError). A link to ``root`` itself, or to a
    folder that is, holds or lies in another class folder, is not a class: its images
    really lie elsewhere and would be labelled twice.
    """
    homes: dict[str, tuple[str, bool]] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            home = resolve_inside(root, entry.name, listing=str(root))
            homes[entry.name] = (str(home), entry.is_symlink())
    real_root = os.path.realpath(root)
    names, rejected = [], []
    for name, (home, is_link) in sorted(homes.items()):
        clash = next(
            (
                other
                for other, (other_home, _) in sorted(
                    homes.items(), key=lambda item: (item[1][1], item[0])
                )
                if other != name and (_inside(home, other_home) or _inside(other_home, home))
            ),
            None,
        )
        if is_link and home == real_root:
            rejected.append((name, f"symlink to the dataset root: not read as class '{name}'"))
        elif is_link and clash is not None:
            rejected.append(
                (
                    name,
                    f"symlink to '{_shown(home, root)}', which overlaps class "
                    f"folder '{clash}': not read as class '{name}'",
                )
            )
        else:
            names.append(name)
    return names, rejected


def _image_files(root: Path, class_name: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Sorted POSIX paths (relative to ``root``) of the images really below one class
    folder, and (path, reason) of the links found there that lead out of it.

    A link whose real path leaves the class folder (to another class, to the root) is not
    followed: its images belong to the folder they really lie in. A link out of ``root`` is
    refused (UnsafePathError); a broken link with an image name is rejected.
    """
    home = str(resolve_inside(root, class_name, listing=str(root)))
    found: list[str] = []
    rejected: list[tuple[str, str]] = []
    visited: set[Path] = set()
    pending = [class_name]
    while pending:
        folder = pending.pop()
        resolved = resolve_inside(root, folder, listing=str(root))
        if resolved in visited:  # a symlink back to a folder already walked
            continue
        visited.add(resolved)
        with os.scandir(root / folder) as listed:
            entries = sorted(listed, key=lambda e: e.name)  # the same walk on every disk
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = f"{folder}/{entry.name}"
            image_name = Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
            if entry.is_symlink():
                if not os.path.exists(root / relative):
                    if image_name:
                        rejected.append(
                            (relative, "broken symbolic link (its target does not exist)")
                        )
                    continue
                real = str(resolve_inside(root, relative, listing=str(root)))
                if not _inside(real, home):
                    if entry.is_dir() or image_name:
                        rejected.append(
                            (
                                relative,
                                f"symlink to '{_shown(real, root)}', "
                                f"outside class folder '{class_name}':"
                                f" not read as class '{class_name}'",
                            )
                        )
                    continue
            if entry.is_dir():
                pending.append(relative)
            elif entry.is_file() and image_name:
                found.append(relative)
    return sorted(found), rejected


def _test_positions(count: int, test_fraction: float, rng: np.random.Generator) -> set[int]:
    """Positions (in sorted order) of the images of one class that go to test."""
    wanted = math.floor(test_fraction * count + 0.5)
    test_count = min(wanted, count - 1)
    order = rng.permutation(count)  # drawn even when test_count is 0: one stream per class
    return {int(position) for position in order[:test_count]}
