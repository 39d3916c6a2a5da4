"""Dataset readers: each turns a folder on disk into a DatasetListing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipeline.datasets.cub import read_cub
from pipeline.datasets.folder import IMAGE_EXTENSIONS, read_folder
from pipeline.datasets.stanford_cars import read_stanford_cars
from pipeline.datasets.stanford_dogs import read_stanford_dogs
from pipeline.errors import DatasetError
from pipeline.records import DatasetListing

SOURCES = ("cub", "folder", "stanford_cars", "stanford_dogs", "synthetic")

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "read_cub",
    "read_dataset",
    "read_folder",
    "read_stanford_cars",
    "read_stanford_dogs",
]


def read_dataset(source: str, root: Path, *, test_fraction: float, seed: int) -> DatasetListing:
    """Read ``root`` with the reader for ``source``; synthetic data is in CUB layout.

    ``test_fraction`` and ``seed`` only matter for ``folder`` (CUB, Stanford Dogs and
    Stanford Cars have their own split).
    """
    root = Path(root)
    if source not in SOURCES:
        raise DatasetError(f"data.source must be one of {', '.join(SOURCES)}, got '{source}'")
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except OSError as exc:  # e.g. a name too long for the filesystem
        raise DatasetError(f"data.root '{root}' cannot be read ({exc.strerror or exc})") from None
    if not exists:
        raise DatasetError(f"data.root '{root}' does not exist")
    if not is_dir:
        raise DatasetError(f"data.root '{root}' is not a folder")
    if source == "folder":
        listing = read_folder(root, test_fraction=test_fraction, seed=seed)
    elif source == "stanford_dogs":
        listing = read_stanford_dogs(root)
    elif source == "stanford_cars":
        listing = read_stanford_cars(root)
    else:
        listing = read_cub(root)
    return replace(listing, source=source)
