"""The crops stage: views from mask shards, index, resume, determinism, errors, show."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from pipeline import layout
from pipeline.crop_shards import CropShard, crop_shard_paths
from pipeline.crops import run_crops, summary_line, views_of_image
from pipeline.imageio import load_rgb
from pipeline.mask_shards import ImageResult, MaskShard, write_shard
from pipeline.params import Params, as_dict
from pipeline.segmenters.base import MaskSet
from pipeline.tables import read_table
from pipeline.view_datasets import ViewDataset
from pipeline.views import resize_square
from stages.cli import main
from tests.e2e import kill_when, stage_env
from tests.tiny_project import copy_project, make_segmented_project, tiny_crops_params

M = 6


def artifact_bytes(project: Path) -> dict[str, bytes]:
    out = project / layout.CROPS_DIR
    files = crop_shard_paths(out) + [project / layout.CROPS_INDEX, project / layout.CROPS_METRICS]
    return {p.name: p.read_bytes() for p in files}


def crops_index(project: Path):
    return read_table(project / layout.CROPS_INDEX, "crops")[0].to_pandas()


@pytest.fixture(scope="module")
def cropped(cropped_project: Path) -> tuple[Path, dict[str, bytes]]:
    project = cropped_project
    return project, artifact_bytes(project)


def test_every_image_gets_m_views_cut_as_views_py_says(cropped) -> None:
    project, _ = cropped
    params = tiny_crops_params()
    df = crops_index(project)
    images = read_table(project / layout.IMAGES_INDEX, "images")[0].to_pandas()
    assert len(df) == 18 * M and len(crop_shard_paths(project / layout.CROPS_DIR)) == 5
    for image_id, views in df.groupby("image_id"):
        truth = images[images.image_id == image_id].iloc[0]
        assert views.view.tolist() == list(range(M))
        assert set(views.class_id) == {truth.class_id} and set(views.split) == {truth.split}
        assert views.shard.nunique() == 1 and not views.fallback.any()
    image_id = 7
    views = df[df.image_id == image_id]
    image = load_rgb(project / params.data.root / images.set_index("image_id").path[image_id])
    mask_shard = project / layout.SEGMENT_DIR / views.shard.iloc[0].replace("crops-", "shard-")
    with MaskShard(mask_shard) as masks:
        expected = views_of_image(image, masks.masks(image_id), params.crops)
    with CropShard(project / layout.CROPS_DIR / views.shard.iloc[0]) as shard:
        stored = shard.rows(views.row.to_numpy())
        full = shard.full[int(views.image_row.iloc[0])]
    assert np.array_equal(stored, expected.crops[np.arange(M) % expected.plan.distinct])
    assert np.array_equal(full, resize_square(image, 16))
    assert np.array_equal(np.stack(views.box), expected.plan.boxes)
    assert views.mask_index.tolist() == expected.plan.mask_index.tolist()
    metrics = json.loads((project / layout.CROPS_METRICS).read_text())
    assert metrics["images"] == 18 and metrics["views"] == 18 * M
    assert metrics["fallback_images"] == 0
    assert metrics["mean_distinct_views"] == round((df.duplicate_of < 0).sum() / 18, 3)


def test_rerun_reuses_shards_and_a_param_change_rebuilds(cropped, tmp_path) -> None:
    source, first = cropped
    project = copy_project(source, tmp_path / "p")
    params = tiny_crops_params()
    again = run_crops(params, project)
    assert again["shards_reused"] == 5 and again["fallback_share"] == 0
    assert artifact_bytes(project) == first  # metrics/crops.json included
    assert "WARNING" not in summary_line(again, M)
    assert not {"shards_reused", "seconds", "images_per_second"} & set(
        json.loads((project / layout.CROPS_METRICS).read_text())
    )
    log = json.loads((project / layout.run_log("crops")).read_text())
    assert log["shards_reused"] == 5 and log["shards_damaged"] == [] and "seconds" in log
    assert run_crops(tiny_crops_params(fill="mean"), project)["shards_reused"] == 0
    changed = artifact_bytes(project)
    assert all(changed[k] != first[k] for k in first if k.startswith("crops-"))
    run_crops(params, project)
    assert artifact_bytes(project) == first


def test_few_masks_are_cycled_and_maskless_images_fall_back(cropped, tmp_path) -> None:
    project = copy_project(cropped[0], tmp_path / "p")
    shard_path = project / layout.SEGMENT_DIR / "shard-00001.h5"
    with MaskShard(shard_path) as shard:
        ids = list(shard)
        results = [ImageResult(i, shard.masks(i)) for i in ids]
    failed, empty = ids[0], ids[1]
    results[0] = ImageResult(failed, failure="segmenter error: boom")
    results[1] = ImageResult(empty, MaskSet.empty(64, 64))
    write_shard(shard_path, results, fingerprint="edited", backend="classical")
    params = tiny_crops_params(min_box_size=30)
    metrics = run_crops(params, project)
    df = crops_index(project)
    assert metrics["fallback_images"] >= 2 and metrics["duplicate_view_share"] > 0
    for image_id in (failed, empty):
        views = df[df.image_id == image_id]
        assert views.fallback.all() and (views.mask_index == -1).all()
        assert views.duplicate_of.tolist() == [-1] + [0] * (M - 1)
        assert np.stack(views.box).tolist() == [[0, 0, 63, 63]] * M
        assert views.predicted_iou.isna().all() and (views.area == 64 * 64).all()
    dups = df[df.duplicate_of >= 0].merge(
        df,
        left_on=["image_id", "duplicate_of"],
        right_on=["image_id", "view"],
        suffixes=("", "_orig"),
    )
    assert len(dups) == (df.duplicate_of >= 0).sum() and (dups.duplicate_of_orig == -1).all()
    assert (dups.row == dups.row_orig).all() and (dups.mask_index == dups.mask_index_orig).all()
    distinct = df[df.duplicate_of < 0]
    assert distinct.groupby("shard").row.apply(lambda r: sorted(r) == list(range(len(r)))).all()
    dataset = ViewDataset(project / layout.CROPS_DIR, "train")
    for k in range(len(dataset)):
        views, _, image_id = dataset[k]
        for v, d in enumerate(df[df.image_id == image_id].duplicate_of):
            assert d < 0 or torch.equal(views[v], views[d])


def test_no_usable_mask_anywhere_gives_whole_image_views(cropped, tmp_path, monkeypatch) -> None:
    """Every image falls back: the views are whole images, and the summary line says so
    as a warning while the stage still exits 0."""
    project = copy_project(cropped[0], tmp_path / "p")
    result = run_cli(project, ["crops"], tiny_crops_params(min_box_size=64), monkeypatch)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and result.stdout.strip().endswith(
        "1.0 distinct views per image; 18 whole-image fallbacks (100 %); WARNING: 100 % of "
        "images have no usable mask; every view of theirs is the whole image; check segment "
        "params and crops.min_box_size"
    )
    metrics = json.loads((project / layout.CROPS_METRICS).read_text())
    assert metrics["fallback_images"] == 18 and metrics["fallback_share"] == 1.0
    assert metrics["duplicate_view_share"] == round((M - 1) / M, 4)
    assert metrics["mean_distinct_views"] == 1
    for path in crop_shard_paths(project / layout.CROPS_DIR):
        with CropShard(path) as shard:
            assert np.array_equal(shard.crops[:], shard.full[:])


def write_params(project: Path, params: Params) -> Path:
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(as_dict(params)))
    return path


def test_sigkill_mid_run_then_rerun_gives_the_same_bytes(tmp_path) -> None:
    params = tiny_crops_params(segment={"shard_size": 1}, size=256)
    segmented = make_segmented_project(tmp_path / "segmented", params)
    reference = copy_project(segmented, tmp_path / "reference")
    project = copy_project(segmented, tmp_path / "project")
    write_params(project, params)
    cmd = [sys.executable, "-m", "stages.cli", "crops"]
    out = project / layout.CROPS_DIR

    def kill_then_rerun() -> tuple[int, bool, subprocess.CompletedProcess]:
        kill_when(cmd, project, lambda: out.exists() and bool(crop_shard_paths(out)), poll=0.002)
        written = len(crop_shard_paths(out))
        indexed = (project / layout.CROPS_INDEX).exists()
        rerun = subprocess.run(cmd, cwd=project, env=stage_env(), capture_output=True, text=True)
        return written, indexed, rerun

    # the killed run and its rerun (subprocesses) go alongside the reference run here
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(kill_then_rerun)
        run_crops(params, reference)
        written, indexed, rerun = killed.result()
    assert 1 <= written < 18, f"the kill must land mid-run ({written} of 18 written)"
    assert not indexed
    assert rerun.returncode == 0, rerun.stderr
    assert f"({written} reused" in rerun.stdout
    assert artifact_bytes(project) == artifact_bytes(reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def run_cli(project: Path, args: list[str], params: Params, monkeypatch) -> object:
    params_path = write_params(project, params)
    monkeypatch.chdir(project)
    return CliRunner().invoke(main, args + ["--params", str(params_path)])


def test_missing_or_corrupt_mask_shards_are_named_in_one_line(
    cropped, tmp_path, monkeypatch
) -> None:
    project = copy_project(cropped[0], tmp_path / "p")
    segment_dir = project / layout.SEGMENT_DIR
    victim = segment_dir / "shard-00002.h5"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    result = run_cli(project, ["crops"], tiny_crops_params(), monkeypatch)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("protomask crops: ")
    assert "shard-00002.h5" in line and "mask shard" in line
    victim.unlink()
    result = run_cli(project, ["crops"], tiny_crops_params(), monkeypatch)
    assert result.exit_code == 1
    assert "missing: shard-00002.h5" in result.stderr and "\n" not in result.stderr.strip()
    victim.write_bytes(data)
    (segment_dir / "shard-00004.h5").unlink()
    result = run_cli(project, ["crops"], tiny_crops_params(), monkeypatch)
    assert result.exit_code == 1 and "missing: shard-00004.h5" in result.stderr


def test_show_writes_a_png_of_the_image_and_its_views(cropped, tmp_path, monkeypatch) -> None:
    project = cropped[0]
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(as_dict(tiny_crops_params())))
    monkeypatch.chdir(project)
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(
        main, ["show", "5", "--out", str(out), "--params", str(params_path)]
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.width > sheet.height > 100
    bad = CliRunner().invoke(main, ["show", "999", "--out", str(out), "--params", str(params_path)])
    assert bad.exit_code == 1 and "no image with id 999" in bad.stderr
