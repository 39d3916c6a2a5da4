"""Crop codecs (param crops.codec): round trips, determinism, and version-2 shards."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline import layout
from pipeline.crop_codecs import CODECS
from pipeline.crop_shards import VIEW_COLUMNS, CropShard, crop_shard_paths, write_crop_shard
from pipeline.crops import run_crops
from pipeline.errors import ArtifactError
from pipeline.params import CropsParams
from pipeline.view_datasets import FullImageDataset, ViewDataset
from tests.tiny_project import copy_project, tiny_crops_params


def smooth_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 images: smooth gradients with mild noise (lossy codecs stay close)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, (x + y) / 2], -1)[None] * rng.uniform(80, 200, (n, 1, 1, 3))
    noise = rng.normal(0, 3, (n, side, side, 3))
    return np.clip(base + 30 + noise, 0, 255).astype(np.uint8)


def write(path: Path, crops: np.ndarray, codec: str) -> None:
    views = {name: np.zeros((4,) + tail, dtype) for name, (dtype, tail) in VIEW_COLUMNS.items()}
    write_crop_shard(
        path,
        crops,
        crops[:2],
        views,
        fingerprint="f",
        size=crops.shape[1],
        fill="zero",
        num_views=2,
        mask_shard="shard-00000.h5",
        codec=codec,
    )


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_each_codec_round_trips_deterministically(tmp_path, codec) -> None:
    crops = smooth_images(5, 24)
    write(tmp_path / "a.h5", crops, codec)
    write(tmp_path / "b.h5", crops, codec)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    with CropShard(tmp_path / "a.h5") as shard:
        assert shard.codec == codec and len(shard.crops) == 5
        back = shard.rows(np.array([4, 1, 1]))
        full = shard.image(1)
    expected = crops[[4, 1, 1]]
    if CODECS[codec].lossless:
        assert np.array_equal(back, expected) and np.array_equal(full, crops[1])
    else:
        error = np.abs(back.astype(int) - expected).mean()
        assert 0 < error < 4, error


def test_a_damaged_encoded_view_fails_alone(tmp_path) -> None:
    from tests.faults import flip_in_chunk

    crops = smooth_images(3, 16)
    write(tmp_path / "a.h5", crops, "png")
    flip_in_chunk(tmp_path / "a.h5", "crops", 1, at=5)
    with CropShard(tmp_path / "a.h5") as shard:
        assert np.array_equal(shard.rows(np.array([2])), crops[[2]])
        with pytest.raises(ArtifactError, match="crops rows 1..1 .a chunk fails its checksum"):
            shard.rows(np.array([1]))


def same_training_tensors(a: Path, b: Path) -> None:
    """The views and whole images training reads from two projects are equal."""
    for split in ("train", "val"):
        for kind in (ViewDataset, FullImageDataset):
            old, new = kind(a / layout.CROPS_DIR, split), kind(b / layout.CROPS_DIR, split)
            assert len(old) == len(new)
            for k in range(len(old)):
                assert torch.equal(old[k][0], new[k][0])


def test_png_is_new_work_with_the_same_training_tensors(cropped_project, tmp_path) -> None:
    """A codec change rebuilds every shard; training reads the same tensors from png as
    from the default codec."""
    with CropShard(crop_shard_paths(cropped_project / layout.CROPS_DIR)[0]) as shard:
        assert shard.codec == CropsParams().codec != "png"
    project = copy_project(cropped_project, tmp_path / "p")
    assert run_crops(tiny_crops_params(codec="png"), project)["shards_reused"] == 0
    same_training_tensors(cropped_project, project)
    with CropShard(crop_shard_paths(project / layout.CROPS_DIR)[0]) as shard:
        assert shard.codec == "png"


def as_version_2(path: Path) -> None:
    """Rewrite a crop shard as the code before codecs wrote it: gzip-1 pixels, version 2,
    no codec attribute (same pixels, views and attributes otherwise)."""
    with CropShard(path) as shard:
        crops, full, views = shard.crops[:], shard.full[:], shard.views()
        keep = (shard.fingerprint, shard.size, shard.fill, shard.mask_shard)
    with h5py.File(path, "r") as f:
        num_views = int(f.attrs["num_views"])
    fingerprint, size, fill, mask_shard = keep
    write_crop_shard(
        path,
        crops,
        full,
        views,
        fingerprint=fingerprint,
        size=size,
        fill=fill,
        num_views=num_views,
        mask_shard=mask_shard,
        codec="gzip",
    )
    with h5py.File(path, "a") as f:
        f.attrs["version"] = np.int32(2)
        del f.attrs["codec"]


def test_version_2_shards_still_read_and_are_rebuilt(cropped_project, tmp_path) -> None:
    """A version 2 shard (gzip-1, the format before codecs) gives training the default
    codec's tensors; the next run rebuilds it, and only it, to the default codec's bytes."""
    project = copy_project(cropped_project, tmp_path / "p")
    fresh = {p.name: p.read_bytes() for p in crop_shard_paths(project / layout.CROPS_DIR)}
    first = crop_shard_paths(project / layout.CROPS_DIR)[0]
    as_version_2(first)
    with CropShard(first) as shard:
        assert shard.codec == "gzip"
    same_training_tensors(cropped_project, project)
    assert run_crops(tiny_crops_params(), project)["shards_reused"] == len(fresh) - 1
    assert {p.name: p.read_bytes() for p in crop_shard_paths(project / layout.CROPS_DIR)} == fresh
