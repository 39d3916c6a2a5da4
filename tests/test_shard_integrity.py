"""Shard integrity: a damaged mask or crop shard is found by the reuse check (Fletcher-32
per chunk, a content digest, a full read), named in one line and rebuilt to the same
bytes; reading a damaged chunk (train, evaluate, show) ends in one ArtifactError."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline import layout
from pipeline.crop_shards import CropShard, crop_shard_paths
from pipeline.errors import ArtifactError
from pipeline.mask_shards import ImageResult, MaskShard, check_mask_shard, shard_paths, write_shard
from pipeline.params import as_dict
from pipeline.segmenters.base import MaskSet
from pipeline.view_datasets import FullImageDataset, ViewDataset
from stages.cli import main
from tests.faults import flip_in_chunk
from tests.tiny_project import copy_project, tiny_crops_params


@pytest.fixture(scope="module")
def cropped(cropped_project: Path) -> Path:
    return cropped_project


@pytest.fixture
def project(cropped, tmp_path) -> Path:
    return copy_project(cropped, tmp_path / "p")


def run_stage(project: Path, stage: str, monkeypatch):
    params = project / "params.yaml"
    params.write_text(yaml.safe_dump(as_dict(tiny_crops_params())))
    monkeypatch.chdir(project)
    return CliRunner().invoke(main, [stage, "--params", str(params)])


def lines_with(text: str, part: str) -> list[str]:
    return [line for line in text.splitlines() if part in line]


# ------------------------------------------------------------------ the format
def test_every_dataset_of_both_shards_is_chunked_with_a_checksum(tmp_path, cropped) -> None:
    path = tmp_path / "shard-00000.h5"
    write_shard(
        path,
        [ImageResult(1, MaskSet.empty(5, 4)), ImageResult(2, failure="x")],
        fingerprint="f",
        backend="classical",
    )
    shards = [path, crop_shard_paths(cropped / layout.CROPS_DIR)[0]]
    for shard in shards:
        with h5py.File(shard, "r") as f:
            datasets: list = []
            f.visititems(
                lambda name, obj, found=datasets: (
                    found.append(obj) if isinstance(obj, h5py.Dataset) else None
                )
            )
            assert len(datasets) >= 14
            for ds in datasets:
                assert ds.chunks is not None and ds.fletcher32, (shard.name, ds.name)
    with h5py.File(path, "r") as f:
        assert f["masks/rle_data"].shape == (0,)  # empty, still chunked and checked


def test_an_empty_dataset_is_verified_by_the_content_digest(tmp_path) -> None:
    """An empty dataset has no chunk to checksum: its shape is covered by the digest."""
    path = tmp_path / "shard-00000.h5"
    write_shard(path, [ImageResult(1, MaskSet.empty(5, 4))], fingerprint="f", backend="classical")
    assert check_mask_shard(path, "f").reusable
    with h5py.File(path, "r+") as f:  # as if its dataspace were damaged
        f["masks/area"].resize((1,))
    found = check_mask_shard(path, "f")
    assert not found.reusable and found.damage == "content digest mismatch"


def test_check_tells_stale_from_damaged(tmp_path) -> None:
    path = tmp_path / "shard-00000.h5"
    rng = np.random.default_rng(0)
    masks = MaskSet.from_binary_masks(
        rng.random((4, 30, 20)) > 0.5, rng.random(4), rng.random(4), rng.random((4, 2))
    )
    write_shard(path, [ImageResult(1, masks)], fingerprint="f", backend="classical")
    assert check_mask_shard(path, "f").reusable
    assert check_mask_shard(path, "g") == check_mask_shard(tmp_path / "none.h5", "f")
    assert check_mask_shard(path, "g").damage is None
    flip_in_chunk(path, "masks/rle_data")
    assert check_mask_shard(path, "f").damage == "checksum error in masks/rle_data"
    path.write_bytes(path.read_bytes()[:1000])
    damage = check_mask_shard(path, "f").damage
    assert damage is not None and damage.startswith("not a readable HDF5 file: truncated")


# ------------------------------------------------------------------ rebuilt on rerun
def test_segment_rebuilds_a_damaged_shard_to_the_same_bytes(project, monkeypatch) -> None:
    out = project / layout.SEGMENT_DIR
    original = {p.name: p.read_bytes() for p in shard_paths(out)}
    metrics = (project / layout.SEGMENT_METRICS).read_bytes()
    flip_in_chunk(out / "shard-00003.h5", "masks/rle_data")
    (out / "shard-00001.h5").write_bytes(original["shard-00001.h5"][:5000])  # truncated
    result = run_stage(project, "segment", monkeypatch)
    assert result.exit_code == 0, result.output
    line = (
        "segment: artifacts/segment/shard-00003.h5 is damaged (checksum error in "
        "masks/rle_data); rebuilding it"
    )
    assert lines_with(result.stderr, "shard-00003.h5") == [line]
    [truncated] = lines_with(result.stderr, "shard-00001.h5")
    assert truncated.startswith(
        "segment: artifacts/segment/shard-00001.h5 is damaged (not "
        "a readable HDF5 file: truncated file"
    ) and truncated.endswith("); rebuilding it")
    assert "(3 reused, 2 damaged rebuilt" in result.stdout
    assert {p.name: p.read_bytes() for p in shard_paths(out)} == original
    assert (project / layout.SEGMENT_METRICS).read_bytes() == metrics


@pytest.mark.parametrize("dataset", ["crops", "views/row"])
def test_crops_rebuilds_a_damaged_shard_to_the_same_bytes(project, monkeypatch, dataset) -> None:
    out = project / layout.CROPS_DIR
    original = {p.name: p.read_bytes() for p in out.iterdir()}
    metrics = (project / layout.CROPS_METRICS).read_bytes()
    flip_in_chunk(out / "crops-00002.h5", dataset)
    result = run_stage(project, "crops", monkeypatch)
    assert result.exit_code == 0, result.output
    assert lines_with(result.stderr, "is damaged") == [
        f"crops: artifacts/crops/crops-00002.h5 is damaged (checksum error in {dataset}); "
        f"rebuilding it"
    ]
    assert "(4 reused, 1 damaged rebuilt" in result.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == original
    assert (project / layout.CROPS_METRICS).read_bytes() == metrics


def test_crops_rebuilds_a_truncated_shard(project, monkeypatch) -> None:
    out = project / layout.CROPS_DIR
    original = {p.name: p.read_bytes() for p in out.iterdir()}
    victim = out / "crops-00004.h5"
    victim.write_bytes(original[victim.name][: len(original[victim.name]) // 2])
    result = run_stage(project, "crops", monkeypatch)
    assert result.exit_code == 0, result.output
    [line] = lines_with(result.stderr, "is damaged")
    assert line.startswith(
        "crops: artifacts/crops/crops-00004.h5 is damaged (not a readable HDF5 file: truncated file"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == original


# ------------------------------------------------------------------ readers
def test_readers_turn_a_damaged_chunk_into_one_artifact_error(project) -> None:
    crops_dir = project / layout.CROPS_DIR
    shard = crops_dir / "crops-00000.h5"
    flip_in_chunk(shard, "crops", 0)
    flip_in_chunk(shard, "full", 0)
    expected = (
        r"crops-00000.h5: damaged crop shard, cannot read .*a chunk fails its "
        r"checksum\); rerun crops \(dvc repro rebuilds it\)"
    )
    with CropShard(shard) as cs:
        assert len(cs.rows(np.array([1, 2]))) == 2  # other chunks still read
        with pytest.raises(ArtifactError, match=expected):
            cs.rows(np.array([0, 1]))
        with pytest.raises(ArtifactError, match=expected):
            cs.image(0)
    hit = 0
    for split in ("train", "val", "test"):
        views, full = ViewDataset(crops_dir, split), FullImageDataset(crops_dir, split)
        first = [
            k
            for k in range(len(views))
            if views.shard_names[views.shard_of[k]] == shard.name and int(views.rows[k].min()) == 0
        ]
        hit += len(first)
        for k in first:
            with pytest.raises(ArtifactError, match=expected):
                views[k]
            with pytest.raises(ArtifactError, match=expected):
                full[k]
    assert hit == 1
    mask_shard = project / layout.SEGMENT_DIR / "shard-00000.h5"
    flip_in_chunk(mask_shard, "masks/rle_data")
    with MaskShard(mask_shard) as ms:
        with pytest.raises(
            ArtifactError,
            match=r"shard-00000.h5: damaged mask shard, cannot "
            r"read the masks of image \d+ .*rerun segment",
        ):
            ms.masks(next(iter(ms)))


def test_show_on_a_damaged_shard_ends_in_one_line(project, monkeypatch) -> None:
    shard = project / layout.CROPS_DIR / "crops-00000.h5"
    flip_in_chunk(shard, "crops", 0)
    with CropShard(shard) as cs:
        image_id = int(cs.views()["image_id"][0])
    params = project / "params.yaml"
    params.write_text(yaml.safe_dump(as_dict(tiny_crops_params())))
    monkeypatch.chdir(project)
    result = CliRunner().invoke(
        main, ["show", str(image_id), "--out", "s.png", "--params", str(params)]
    )
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert (
        result.stderr.startswith("protomask show: ")
        and "crops-00000.h5: damaged crop shard" in result.stderr
        and "rerun crops" in result.stderr
    )


def test_a_damaged_chunk_in_a_dataloader_worker_ends_in_one_line(project) -> None:
    """Training reads views in DataLoader workers: the worker's ArtifactError reaches the
    stage as one line (stages.common.one_line), never damaged pixels."""
    import torch.utils.data

    from stages.common import one_line

    crops_dir = project / layout.CROPS_DIR
    dataset = ViewDataset(crops_dir, "train")
    victim = dataset.shard_names[dataset.shard_of[0]]
    flip_in_chunk(crops_dir / victim, "crops", int(dataset.rows[0].min()))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=1, multiprocessing_context="fork"
    )
    with pytest.raises(ArtifactError) as caught:
        list(loader)
    line = one_line(caught.value)
    assert "\n" not in line and line.startswith(
        f"{crops_dir / victim}: damaged crop shard, cannot read crops rows"
    )
    assert line.endswith("(a chunk fails its checksum); rerun crops (dvc repro rebuilds it)")


def test_uncompressed_crops_are_checked_too(tmp_path) -> None:
    """crops.codec none has no decompression to fail: the checksum still catches a
    flipped pixel instead of handing it to training."""
    from pipeline.crop_shards import VIEW_COLUMNS, write_crop_shard

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    views = {name: np.zeros((3,) + tail, dtype) for name, (dtype, tail) in VIEW_COLUMNS.items()}
    path = tmp_path / "crops-00000.h5"
    write_crop_shard(
        path,
        crops,
        crops[:1],
        views,
        fingerprint="f",
        size=8,
        fill="zero",
        num_views=3,
        mask_shard="shard-00000.h5",
        codec="none",
    )
    flip_in_chunk(path, "crops", 1)
    with CropShard(path) as shard:
        assert np.array_equal(shard.rows(np.array([2, 2])), crops[[2, 2]])
        with pytest.raises(ArtifactError, match="crops rows 1..1 .a chunk fails its checksum"):
            shard.rows(np.array([1]))
