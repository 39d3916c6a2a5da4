"""Crop codecs: how a crop shard stores its images (param ``crops.codec``).

Two kinds, one registry (:data:`CODECS`, the choice list of the param):

- **pixel codecs** keep raw ``(n, S, S, 3)`` uint8 rows, one chunk per image, behind an
  HDF5 filter: ``gzip`` (level 1, the format before codecs), ``lzf``, ``none`` and
  ``blosc-zstd`` (Blosc with zstd and bit shuffle, from the hdf5plugin package);
- **image codecs** encode each image on its own with OpenCV (PNG, WebP, JPEG) and store
  its bytes as one row of an ``(n, L)`` uint8 dataset (L: the longest encoding in the
  shard; the zero padding after each encoding is squeezed out by a zstd filter), with
  the encoded lengths beside it in ``<name>_nbytes``. One chunk per image either way, so
  one image reads (and fails its Fletcher-32 checksum) without its neighbours, and no
  variable-length HDF5 type is needed (their global heap breaks byte-determinism).

Lossless codecs give back exactly the pixels they were given; ``jpeg-q90`` and
``webp-q90`` are lossy and only used when asked for. Encoders are deterministic: the
same pixels give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import cv2
import h5py
import hdf5plugin  # registers the Blosc and Zstd filters with h5py
import numpy as np

from pipeline.hdf5_files import CheckedWriter

NBYTES_SUFFIX = "_nbytes"  # the dataset of an image codec's encoded lengths


@dataclass(frozen=True)
class PixelCodec:
    """Raw uint8 pixels, one chunk per image, compressed by an HDF5 filter."""

    name: str
    filters: Mapping[str, object] = field(default_factory=dict)
    lossless: bool = True

    def write(self, writer: CheckedWriter, name: str, images: np.ndarray) -> None:
        """Store ``images`` (n, S, S, 3) uint8 as dataset ``name``."""
        writer.dataset(name, images, rows_per_chunk=1, **self.filters)

    def reader(self, file: h5py.File, name: str) -> Callable[[int, int], np.ndarray]:
        """``read(lo, hi)``: images ``lo..hi-1`` of dataset ``name``, (hi - lo, S, S, 3)."""
        dataset = file[name]
        return lambda lo, hi: dataset[lo:hi]


@dataclass(frozen=True)
class ImageCodec:
    """Each image encoded as an image file (OpenCV), one padded row of bytes per image."""

    name: str
    extension: str  # ".png", ".webp", ".jpg"
    options: tuple[int, ...]  # cv2.imwrite flags, (flag, value) pairs
    lossless: bool

    def encode(self, image: np.ndarray) -> np.ndarray:
        """One RGB (S, S, 3) uint8 image as encoded bytes (1-D uint8)."""
        ok, data = cv2.imencode(self.extension, image[..., ::-1], list(self.options))
        if not ok:
            raise ValueError(f"crops.codec {self.name}: OpenCV could not encode a crop")
        return data.reshape(-1)

    def decode(self, data: np.ndarray, side: int) -> np.ndarray:
        """Encoded bytes back to an RGB (side, side, 3) uint8 image."""
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if image is None or image.shape != (side, side, 3):
            raise ValueError(f"crops.codec {self.name}: stored bytes do not decode to a crop")
        return image[..., ::-1]

    def write(self, writer: CheckedWriter, name: str, images: np.ndarray) -> None:
        """Store ``images`` (n, S, S, 3) as dataset ``name`` (n, L) and ``name_nbytes``."""
        encoded = [self.encode(image) for image in images]
        lengths = np.array([len(e) for e in encoded], np.int32)
        rows = np.zeros((len(encoded), int(lengths.max(initial=1))), np.uint8)
        for row, data in zip(rows, encoded, strict=True):
            row[: len(data)] = data
        writer.dataset(name, rows, rows_per_chunk=1, **hdf5plugin.Zstd(clevel=1))
        writer.dataset(name + NBYTES_SUFFIX, lengths, rows_per_chunk=len(lengths))

    def reader(self, file: h5py.File, name: str) -> Callable[[int, int], np.ndarray]:
        """``read(lo, hi)``: images ``lo..hi-1`` of dataset ``name``, decoded, as
        (hi - lo, S, S, 3) uint8 (the lengths are read once, here)."""
        dataset, side = file[name], int(file.attrs["size"])
        lengths = file[name + NBYTES_SUFFIX][:]

        def read(lo: int, hi: int) -> np.ndarray:
            rows = dataset[lo:hi]
            out = np.empty((len(rows), side, side, 3), np.uint8)
            for k, row in enumerate(rows):
                out[k] = self.decode(row[: int(lengths[lo + k])], side)
            return out

        return read


Codec = PixelCodec | ImageCodec

CODECS: dict[str, Codec] = {
    codec.name: codec
    for codec in (
        PixelCodec("gzip", {"compression": "gzip", "compression_opts": 1}),
        PixelCodec("lzf", {"compression": "lzf"}),
        PixelCodec("none"),
        PixelCodec(
            "blosc-zstd",
            hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE),
        ),
        ImageCodec("png", ".png", (cv2.IMWRITE_PNG_COMPRESSION, 1), lossless=True),
        ImageCodec("webp-lossless", ".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), lossless=True),
        ImageCodec("jpeg-q90", ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 90), lossless=False),
        ImageCodec("webp-q90", ".webp", (cv2.IMWRITE_WEBP_QUALITY, 90), lossless=False),
    )
}
# shards written before codecs existed (format version 2) hold gzip-1 pixels
LEGACY_CODEC = "gzip"


def codec_named(name: str) -> Codec:
    """The codec of ``crops.codec`` value ``name``; a clear error for an unknown one."""
    if name not in CODECS:
        raise ValueError(f"crops.codec must be one of {', '.join(CODECS)}, got {name!r}")
    return CODECS[name]
