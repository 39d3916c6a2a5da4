"""Mask shards: round trip, failures, same bytes, clear errors on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ArtifactError
from pipeline.mask_shards import ImageResult, MaskShard, check_mask_shard, write_shard
from pipeline.segmenters.base import MaskSet, boxes_of


def some_masks(seed: int, n: int = 3, h: int = 9, w: int = 7) -> MaskSet:
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) > 0.6
    return MaskSet.from_binary_masks(masks, rng.random(n), rng.random(n), rng.random((n, 2)) * 5)


def test_boxes_are_inclusive_at_borders_and_for_one_pixel() -> None:
    masks = np.zeros((3, 5, 6), bool)
    masks[0, 4, 5] = True  # one pixel in the corner
    masks[1, :, :] = True  # everything
    boxes = boxes_of(masks)
    assert boxes.tolist() == [[5, 4, 5, 4], [0, 0, 5, 4], [0, 0, 0, 0]]


def test_round_trip_and_failures(tmp_path: Path) -> None:
    a, b = some_masks(1), some_masks(2, n=5)
    results = [
        ImageResult(3, a),
        ImageResult(7, failure="truncated image"),
        ImageResult(9, b),
        ImageResult(11, MaskSet.empty(9, 7)),
    ]
    path = tmp_path / "shard-00000.h5"
    write_shard(path, results, fingerprint="abc", backend="classical")
    assert check_mask_shard(path, "abc").reusable
    with MaskShard(path) as shard:
        assert list(shard) == [3, 7, 9, 11]
        assert shard.status(7) == "failed: truncated image"
        assert shard.failures() == [(7, "truncated image")]
        assert shard.num_masks == 8
        back = shard.masks(9)
        assert np.array_equal(back.decode(), b.decode())
        assert np.array_equal(back.boxes, b.boxes) and np.array_equal(back.areas, b.areas)
        assert np.allclose(back.predicted_iou, b.predicted_iou)
        assert len(shard.masks(7)) == 0 and len(shard.masks(11)) == 0


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    results = [ImageResult(1, some_masks(1)), ImageResult(2, some_masks(2))]
    write_shard(tmp_path / "a.h5", results, fingerprint="f", backend="classical")
    write_shard(tmp_path / "b.h5", results, fingerprint="f", backend="classical")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_corrupt_or_foreign_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "shard-00001.h5"
    write_shard(path, [ImageResult(1, some_masks(1))], fingerprint="f", backend="classical")
    path.write_bytes(path.read_bytes()[:300])
    assert check_mask_shard(path, "f").damage.startswith("not a readable HDF5 file")
    with pytest.raises(ArtifactError, match="shard-00001.h5"):
        MaskShard(path)
    other = tmp_path / "other.h5"
    import h5py

    with h5py.File(other, "w") as f:
        f.attrs["format"] = "protomask.masks"
        f.attrs["version"] = 99
    with pytest.raises(ArtifactError, match="other.h5: mask shard version 99 is not known"):
        MaskShard(other)
