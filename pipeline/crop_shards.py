"""Crop shards: the views of many images in one HDF5 file (SPEC section 4), and their reader.

One crop shard per mask shard (``crops-00003.h5`` from ``shard-00003.h5``). Layout::

    attrs: format, version, fingerprint, size, fill, num_views, mask_shard
           (fixed-length strings and integers)
    crops (R, S, S, 3) uint8   the distinct views, one chunk per crop (gzip level 1, lzf or
                               uncompressed: param crops.compression), so one crop
                               reads without its neighbours; an image's distinct views
                               are consecutive rows, in view order
    full  (N, S, S, 3) uint8   every image, whole, resized to S x S (the baseline's input)
    views/<column> (N*M, ...)  one row per view: the crops index rows of this shard
                               (VIEW_COLUMNS), fixed-size types only

A repeated view (duplicate_of >= 0) is not stored again: its ``row`` is the row of the
view it repeats. No variable-length HDF5 type is used (their global heap leaves
uninitialised bytes), times are not tracked, so the same inputs give the same bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from pipeline.atomic import atomic_file
from pipeline.errors import ArtifactError
from pipeline.hdf5_files import attr_text, open_stamped, stamped_fingerprint

FORMAT = "protomask.crops"
VERSION = 1

# Per-view columns stored in every shard, with their fixed-size dtypes and trailing shape.
VIEW_COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "image_id": ("int64", ()),
    "view": ("int16", ()),
    "mask_index": ("int32", ()),        # row of the mask among the image's masks; -1: whole image
    "duplicate_of": ("int16", ()),      # the view this one repeats; -1: none
    "box": ("int32", (4,)),             # inclusive x_min, y_min, x_max, y_max
    "area": ("int64", ()),              # mask pixels (the image's for a fallback view)
    "predicted_iou": ("float32", ()),   # NaN for a fallback view
    "stability_score": ("float32", ()), # NaN for a fallback view
    "class_id": ("int32", ()),
    "split": ("S5", ()),                # train | val | test
    "row": ("int32", ()),               # row in ``crops``
    "image_row": ("int32", ()),         # row in ``full``
    "fallback": ("uint8", ()),          # 1: the image had no usable mask
}


def crop_shard_name(index: int) -> str:
    """File name of the crop shard of mask shard ``index``."""
    return f"crops-{index:05d}.h5"


def crop_shard_paths(directory: Path) -> list[Path]:
    """The complete crop shards of a crops output folder, in order."""
    return sorted(Path(directory).glob("crops-*.h5"))


COMPRESSION = {"gzip": {"compression": "gzip", "compression_opts": 1},
               "lzf": {"compression": "lzf"}, "none": {}}


def _images_dataset(f: h5py.File, name: str, images: np.ndarray, compression: str) -> None:
    """(n, S, S, 3) uint8, one chunk per image, compressed as ``compression`` says."""
    if compression not in COMPRESSION:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSION)}, "
                         f"got {compression!r}")
    f.create_dataset(name, data=images, chunks=(1,) + images.shape[1:], track_times=False,
                     **COMPRESSION[compression])


def write_crop_shard(path: Path, crops: np.ndarray, full: np.ndarray,
                     views: Mapping[str, np.ndarray], *, fingerprint: str, size: int,
                     fill: str, num_views: int, mask_shard: str,
                     compression: str = "gzip") -> None:
    """Write one crop shard atomically; identical inputs give identical bytes."""
    missing = set(VIEW_COLUMNS) - set(views)
    if missing or len(crops) == 0 or len(full) == 0:
        raise ValueError(f"a crop shard needs crops, full images and every view column "
                         f"(missing: {sorted(missing)})")
    with atomic_file(Path(path)) as tmp:
        # No chunk cache: every chunk reaches the file inside create_dataset, so where it
        # lands cannot depend on when Python frees the dataset object (it did, under dask).
        with h5py.File(tmp, "w", track_order=False, libver=("earliest", "v110"),
                       rdcc_nbytes=0) as f:
            f.attrs.update({"format": np.bytes_(FORMAT), "version": np.int32(VERSION),
                            "fingerprint": np.bytes_(fingerprint), "size": np.int32(size),
                            "fill": np.bytes_(fill), "num_views": np.int32(num_views),
                            "mask_shard": np.bytes_(mask_shard)})
            _images_dataset(f, "crops", crops, compression)
            _images_dataset(f, "full", full, compression)
            group = f.create_group("views")
            for name, (dtype, tail) in VIEW_COLUMNS.items():
                data = np.asarray(views[name]).astype(dtype, copy=False)
                if data.shape[1:] != tail:
                    raise ValueError(f"view column {name} has shape {data.shape}")
                group.create_dataset(name, data=data, track_times=False)


def crop_shard_fingerprint(path: Path) -> str | None:
    """The fingerprint a complete crop shard was written with, or None if unreadable."""
    return stamped_fingerprint(path, FORMAT, VERSION)


class CropShard:
    """Read access to one crop shard. Opens the file on construction; close() or ``with``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open_stamped(self.path, FORMAT, VERSION, "crop shard", "crops")
        try:
            self.crops = self._file["crops"]
            self.full = self._file["full"]
        except KeyError as exc:
            self._file.close()
            raise ArtifactError(f"{self.path}: corrupt crop shard ({exc})") from None
        self.fingerprint = attr_text(self._file.attrs["fingerprint"])
        self.size = int(self._file.attrs["size"])
        self.fill = attr_text(self._file.attrs["fill"])
        self.mask_shard = attr_text(self._file.attrs["mask_shard"])

    def __enter__(self) -> "CropShard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def views(self) -> dict[str, np.ndarray]:
        """Every per-view column (VIEW_COLUMNS) as arrays."""
        try:
            group = self._file["views"]
            return {name: group[name][:] for name in VIEW_COLUMNS}
        except (KeyError, OSError) as exc:
            raise ArtifactError(f"{self.path}: corrupt crop shard ({exc})") from None

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Crops of the given rows (any order, repeats allowed) as (len, S, S, 3) uint8,
        reading the one contiguous block that spans them."""
        rows = np.asarray(rows, np.int64)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return self.crops[lo:hi][rows - lo]
