"""Crop shards: the views of many images in one HDF5 file, and their reader.

One crop shard per mask shard (``crops-00003.h5`` from ``shard-00003.h5``: the names are
built in pipeline/mask_shards.py). Layout::

    attrs: format, version, fingerprint, size, fill, num_views, mask_shard, codec
           (fixed-length strings and integers; num_views is kept for the record and
           the format's bytes: readers take M from the crops index facts, the one
           documented place for it, never from a shard)
    crops                      the distinct views, one chunk per crop, stored as param
                               crops.codec says (pipeline/crop_codecs.py: raw (R, S, S, 3)
                               uint8 behind an HDF5 filter, or one encoded image per row
                               plus crops_nbytes), so one crop reads without its
                               neighbours; an image's distinct views are consecutive
                               rows, in view order
    full                       every image, whole, resized to S x S (the baseline's
                               input), stored like crops
    views/<column> (N*M, ...)  one row per view: the crops index rows of this shard
                               (VIEW_COLUMNS), fixed-size types only, one chunk each

Every dataset is chunked with a Fletcher-32 checksum per chunk, and the attribute
content_sha256 digests the whole content (pipeline/hdf5_files.py): a damaged shard fails
its reuse check and every read of a damaged chunk.

A repeated view (duplicate_of >= 0) is not stored again: its ``row`` is the row of the
view it repeats. No variable-length HDF5 type is used (their global heap leaves
uninitialised bytes), times are not tracked, so the same inputs give the same bytes.
Version 2 shards (before codecs: gzip, lzf or raw pixels, no ``codec`` attribute) still
read; the crops stage rebuilds them on its next run (their fingerprint is stale).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from pipeline.atomic import atomic_file
from pipeline.crop_codecs import LEGACY_CODEC, Codec, codec_named
from pipeline.errors import ArtifactError
from pipeline.hdf5_files import (
    CheckedWriter,
    ShardCheck,
    attr_text,
    check_shard,
    open_stamped,
    reading,
)

FORMAT = "protomask.crops"
VERSION = 3  # 2: Fletcher-32 on every chunk, content digest; 3: param crops.codec
READABLE_VERSIONS = (2, 3)
KIND, STAGE = "crop shard", "crops"

# Per-view columns stored in every shard, with their fixed-size dtypes and trailing shape.
VIEW_COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "image_id": ("int64", ()),
    "view": ("int16", ()),
    "mask_index": ("int32", ()),  # row of the mask among the image's masks; -1: whole image
    "duplicate_of": ("int16", ()),  # the view this one repeats; -1: none
    "box": ("int32", (4,)),  # inclusive x_min, y_min, x_max, y_max
    "area": ("int64", ()),  # mask pixels (the image's for a fallback view)
    "predicted_iou": ("float32", ()),  # NaN for a fallback view
    "stability_score": ("float32", ()),  # NaN for a fallback view
    "class_id": ("int32", ()),
    "split": ("S5", ()),  # train | val | test
    "row": ("int32", ()),  # row in ``crops``
    "image_row": ("int32", ()),  # row in ``full``
    "fallback": ("uint8", ()),  # 1: the image had no usable mask
}


def crop_shard_paths(directory: Path) -> list[Path]:
    """The complete crop shards of a crops output folder, in order."""
    return sorted(Path(directory).glob("crops-*.h5"))


def write_crop_shard(
    path: Path,
    crops: np.ndarray,
    full: np.ndarray,
    views: Mapping[str, np.ndarray],
    *,
    fingerprint: str,
    size: int,
    fill: str,
    num_views: int,
    mask_shard: str,
    codec: str = LEGACY_CODEC,
) -> None:
    """Write one crop shard atomically, its images stored as ``codec`` (a crops.codec
    value); identical inputs give identical bytes."""
    images_codec = codec_named(codec)
    missing = set(VIEW_COLUMNS) - set(views)
    if missing or len(crops) == 0 or len(full) == 0:
        raise ValueError(
            f"a crop shard needs crops, full images and every view column "
            f"(missing: {sorted(missing)})"
        )
    with atomic_file(Path(path)) as tmp:
        # No chunk cache: every chunk reaches the file inside create_dataset, so where it
        # lands cannot depend on when Python frees the dataset object (it did, under dask).
        with h5py.File(
            tmp, "w", track_order=False, libver=("earliest", "v110"), rdcc_nbytes=0
        ) as f:
            f.attrs.update(
                {
                    "format": np.bytes_(FORMAT),
                    "version": np.int32(VERSION),
                    "fingerprint": np.bytes_(fingerprint),
                    "size": np.int32(size),
                    "fill": np.bytes_(fill),
                    "num_views": np.int32(num_views),
                    "mask_shard": np.bytes_(mask_shard),
                    "codec": np.bytes_(codec),
                }
            )
            writer = CheckedWriter(f)
            images_codec.write(writer, "crops", np.ascontiguousarray(crops, np.uint8))
            images_codec.write(writer, "full", np.ascontiguousarray(full, np.uint8))
            for name, (dtype, tail) in VIEW_COLUMNS.items():
                data = np.asarray(views[name]).astype(dtype, copy=False)
                if data.shape[1:] != tail:
                    raise ValueError(f"view column {name} has shape {data.shape}")
                writer.dataset(f"views/{name}", data, rows_per_chunk=len(data))
            writer.stamp()


def check_crop_shard(path: Path | str, fingerprint: str) -> ShardCheck:
    """Whether the crop shard at ``path`` can be reused for ``fingerprint`` (full read)."""
    return check_shard(path, FORMAT, VERSION, fingerprint)


class StoredImages:
    """One image dataset of a crop shard (``crops`` or ``full``), decoded by its codec on
    read: ``images[k]`` -> (S, S, 3) uint8, ``images[lo:hi]`` -> (n, S, S, 3) uint8."""

    def __init__(self, file: h5py.File, name: str, codec: Codec) -> None:
        self.name = name
        self._length = len(file[name])
        self._read = codec.reader(file, name)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            lo, hi, step = key.indices(self._length)
            return self._read(lo, max(lo, hi))[::step]
        k = int(key) + (self._length if int(key) < 0 else 0)
        if not 0 <= k < self._length:
            raise IndexError(f"{self.name} row {key} of {self._length}")
        return self._read(k, k + 1)[0]


class CropShard:
    """Read access to one crop shard. Opens the file on construction; close() or ``with``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open_stamped(self.path, FORMAT, READABLE_VERSIONS, KIND, STAGE)
        try:
            with reading(self.path, KIND, STAGE, "its datasets and attributes"):
                self.codec = attr_text(self._file.attrs.get("codec", LEGACY_CODEC))
                codec = codec_named(self.codec)
                self.crops = StoredImages(self._file, "crops", codec)
                self.full = StoredImages(self._file, "full", codec)
                self.fingerprint = attr_text(self._file.attrs["fingerprint"])
                self.size = int(self._file.attrs["size"])
                self.fill = attr_text(self._file.attrs["fill"])
                self.mask_shard = attr_text(self._file.attrs["mask_shard"])
        except ValueError as exc:  # a codec this code does not know
            self._file.close()
            raise ArtifactError(f"{self.path}: {exc}; rerun {STAGE}") from None
        except ArtifactError:
            self._file.close()
            raise

    def __enter__(self) -> CropShard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def views(self) -> dict[str, np.ndarray]:
        """Every per-view column (VIEW_COLUMNS) as arrays."""
        with reading(self.path, KIND, STAGE, "the views table"):
            group = self._file["views"]
            return {name: group[name][:] for name in VIEW_COLUMNS}

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Crops of the given rows (any order, repeats allowed) as (len, S, S, 3) uint8,
        reading (and decoding) the one contiguous block that spans them."""
        rows = np.asarray(rows, np.int64)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        with reading(self.path, KIND, STAGE, f"crops rows {lo}..{hi - 1}"):
            return self.crops[lo:hi][rows - lo]

    def image(self, row: int) -> np.ndarray:
        """The whole image of ``row`` (of ``full``) as (S, S, 3) uint8."""
        with reading(self.path, KIND, STAGE, f"full image row {row}"):
            return self.full[int(row)]
