"""Mask shards: many images' masks in one HDF5 file, and their reader.

Layout of one shard::

    attrs: format, version, fingerprint, backend, checkpoint_sha256, content_sha256
    images/image_id (n,) int64      images/status (n,) fixed-length UTF-8 ("ok" or "failed: <reason>")
    images/height, images/width (n,) int32
    images/mask_start (n,) int64    images/mask_count (n,) int32
    masks/image_id (m,) int64       masks/rle_data (bytes,) uint8 + masks/rle_end (m,) int64:
                                    mask i's COCO compressed RLE counts are
                                    rle_data[rle_end[i-1]:rle_end[i]]
    masks/box (m, 4) int32 inclusive x_min, y_min, x_max, y_max
    masks/area (m,) int64           masks/predicted_iou, masks/stability_score (m,) float32
    masks/point (m, 2) float32      (the prompt point; the region centre for classical)

    (every dataset chunked with a Fletcher-32 checksum per chunk, plus the content digest
    attribute content_sha256: pipeline/hdf5_files.py)

Names: mask shard ``index`` is ``shard-<index:05d>.h5`` and its crop shard (the crops
stage's) ``crops-<index:05d>.h5``; this module builds and parses both
(:func:`mask_shard_name`, :func:`mask_shard_index`, :func:`crop_shard_name`).

Shards are written to a temporary name and renamed when complete. No variable-length
HDF5 types are used: their heap leaves uninitialised bytes, and same inputs must give the
same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.atomic import atomic_file
from pipeline.errors import ArtifactError
from pipeline.hdf5_files import CheckedWriter, ShardCheck, check_shard, open_stamped, reading
from pipeline.segmenters.base import MaskSet

FORMAT = "protomask.masks"
VERSION = 2  # 2: Fletcher-32 on every chunk, content digest
KIND, STAGE = "mask shard", "segment"
PREFIX = "shard-"  # every mask shard's name starts so (stale-file removal)
_NAME = re.compile(r"shard-(\d+)\.h5")


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one image: its masks, or the reason it failed."""

    image_id: int
    masks: MaskSet | None = None
    failure: str | None = None


def _dataset(writer: CheckedWriter, name: str, data: np.ndarray) -> None:
    """A chunked, compressed, checksummed dataset."""
    data = np.asarray(data)
    writer.dataset(
        name,
        data,
        rows_per_chunk=65536 if data.ndim == 1 else 4096,
        compression="gzip",
        compression_opts=4,
        shuffle=True,
    )


def write_shard(
    path: Path,
    results: Sequence[ImageResult],
    *,
    fingerprint: str,
    backend: str,
    checkpoint_sha256: str = "",
) -> None:
    """Write one shard atomically; identical inputs give identical bytes."""
    starts, counts, statuses, heights, widths = [], [], [], [], []
    rles: list[bytes] = []
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("image_id", "box", "area", "iou", "stab", "point")
    }
    total = 0
    for r in results:
        m = r.masks
        starts.append(total)
        counts.append(len(m) if m is not None else 0)
        statuses.append("ok" if r.failure is None else f"failed: {r.failure}")
        heights.append(m.height if m is not None else 0)
        widths.append(m.width if m is not None else 0)
        if m is None or len(m) == 0:
            continue
        total += len(m)
        rles.extend(m.rles)
        parts["image_id"].append(np.full(len(m), r.image_id, np.int64))
        parts["box"].append(m.boxes.astype(np.int32))
        parts["area"].append(m.areas.astype(np.int64))
        parts["iou"].append(m.predicted_iou.astype(np.float32))
        parts["stab"].append(m.stability_score.astype(np.float32))
        parts["point"].append(m.points.astype(np.float32))

    def cat(key: str, dtype, shape: tuple) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.zeros(shape, dtype)

    rle_data = np.frombuffer(b"".join(rles), np.uint8)
    rle_end = np.cumsum([len(r) for r in rles], dtype=np.int64)
    encoded = [s.encode("utf-8") for s in statuses]
    status = np.asarray(encoded, dtype=f"S{max(map(len, encoded), default=1)}")
    with atomic_file(Path(path)) as tmp:
        # No raw-data chunk cache: each chunk is written (and placed in the file) when its
        # dataset is created, not whenever the garbage collector closes the dataset.
        with h5py.File(
            tmp, "w", track_order=False, libver=("earliest", "v110"), rdcc_nbytes=0
        ) as f:
            f.attrs.update(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "fingerprint": fingerprint,
                    "backend": backend,
                    "checkpoint_sha256": checkpoint_sha256,
                }
            )
            writer = CheckedWriter(f)
            _dataset(writer, "images/image_id", np.asarray([r.image_id for r in results], np.int64))
            _dataset(writer, "images/status", status)
            _dataset(writer, "images/height", np.asarray(heights, np.int32))
            _dataset(writer, "images/width", np.asarray(widths, np.int32))
            _dataset(writer, "images/mask_start", np.asarray(starts, np.int64))
            _dataset(writer, "images/mask_count", np.asarray(counts, np.int32))
            _dataset(writer, "masks/image_id", cat("image_id", np.int64, (0,)))
            _dataset(writer, "masks/rle_data", rle_data)
            _dataset(writer, "masks/rle_end", rle_end)
            _dataset(writer, "masks/box", cat("box", np.int32, (0, 4)))
            _dataset(writer, "masks/area", cat("area", np.int64, (0,)))
            _dataset(writer, "masks/predicted_iou", cat("iou", np.float32, (0,)))
            _dataset(writer, "masks/stability_score", cat("stab", np.float32, (0,)))
            _dataset(writer, "masks/point", cat("point", np.float32, (0, 2)))
            writer.stamp()


def check_mask_shard(path: Path | str, fingerprint: str) -> ShardCheck:
    """Whether the shard at ``path`` can be reused for ``fingerprint`` (full read)."""
    return check_shard(path, FORMAT, VERSION, fingerprint)


class MaskShard:
    """Read access to one mask shard: the images in it and each image's masks."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open_stamped(self.path, FORMAT, VERSION, KIND, STAGE)
        try:
            with reading(self.path, KIND, STAGE, "the images table"):
                images = self._file["images"]
                self.image_ids = images["image_id"][:]
                self._status = [s.decode("utf-8") for s in images["status"][:]]
                self._start = images["mask_start"][:]
                self._count = images["mask_count"][:]
                self._height = images["height"][:]
                self._width = images["width"][:]
                self.fingerprint = str(self._file.attrs["fingerprint"])
                self.backend = str(self._file.attrs["backend"])
        except ArtifactError:
            self._file.close()
            raise
        self._row = {int(i): k for k, i in enumerate(self.image_ids)}

    def __enter__(self) -> MaskShard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def num_masks(self) -> int:
        """Masks of all images in the shard."""
        return int(self._count.sum())

    @property
    def images_without_masks(self) -> int:
        """Images of the shard with no mask (failed ones included)."""
        return int((self._count == 0).sum())

    def failures(self) -> list[tuple[int, str]]:
        """(image_id, reason) of every image that failed."""
        return [
            (int(i), s[len("failed: ") :])
            for i, s in zip(self.image_ids, self._status, strict=False)
            if s != "ok"
        ]

    def status(self, image_id: int) -> str:
        """'ok' or 'failed: <reason>'."""
        return self._status[self._row[int(image_id)]]

    def masks(self, image_id: int) -> MaskSet:
        """The masks of one image as RLE with their records (empty if it failed)."""
        k = self._row[int(image_id)]
        a, n = int(self._start[k]), int(self._count[k])
        sl = slice(a, a + n)
        with reading(self.path, KIND, STAGE, f"the masks of image {image_id}"):
            g = self._file["masks"]
            rles: list[bytes] = []
            if n:
                ends = g["rle_end"][sl]
                first = int(g["rle_end"][a - 1]) if a else 0
                data = g["rle_data"][first : int(ends[-1])].tobytes()
                bounds = np.concatenate([[0], ends - first])
                rles = [data[bounds[i] : bounds[i + 1]] for i in range(n)]
            return MaskSet(
                int(self._height[k]),
                int(self._width[k]),
                rles,
                g["box"][sl] if n else np.zeros((0, 4), np.int32),
                g["area"][sl] if n else np.zeros(0, np.int64),
                g["predicted_iou"][sl] if n else np.zeros(0, np.float32),
                g["stability_score"][sl] if n else np.zeros(0, np.float32),
                g["point"][sl] if n else np.zeros((0, 2), np.float32),
            )

    def __iter__(self) -> Iterator[int]:
        return iter(int(i) for i in self.image_ids)


def shard_paths(directory: Path) -> list[Path]:
    """The complete shards of a segment output folder, in order."""
    return sorted(Path(directory).glob(f"{PREFIX}*.h5"))


def mask_shard_name(index: int) -> str:
    """File name of mask shard ``index`` (3 -> shard-00003.h5)."""
    return f"{PREFIX}{index:05d}.h5"


def mask_shard_index(path: Path) -> int:
    """The number in a mask shard's name (shard-00003.h5 -> 3).

    Raises:
        ArtifactError: the name is not a mask shard's.
    """
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        raise ArtifactError(f"{path}: not a mask shard name (shard-NNNNN.h5)")
    return int(match.group(1))


def crop_shard_name(mask_shard: Path) -> str:
    """File name of the crop shard cut from ``mask_shard`` (shard-00003.h5 ->
    crops-00003.h5)."""
    return f"crops-{mask_shard_index(mask_shard):05d}.h5"
