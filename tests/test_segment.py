"""The segment stage: classical masks, shards through dask, resume, failures, SIGKILL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import layout
from pipeline.mask_shards import MaskShard, shard_paths
from pipeline.params import ClassicalParams, as_dict
from pipeline.segment import run_segment, summary_line
from pipeline.segmenters.classical import segment_classical
from tests.e2e import kill_when, stage_env
from tests.mask_shard_checks import assert_same_shards, shard_bytes
from tests.tiny_project import make_tiny_project, tiny_params


def test_classical_finds_flat_regions_with_consistent_records() -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((64, 80, 3)) * 40 + 100).astype(np.uint8)
    image[10:30, 5:25] = (230, 20, 20)
    image[40:60, 50:78] = (20, 20, 230)
    result = segment_classical(image, ClassicalParams(sigma=0.0, max_area_fraction=0.95))
    masks = result.decode()
    for y0, y1, x0, x1 in [(10, 30, 5, 25), (40, 60, 50, 78)]:
        truth = np.zeros((64, 80), bool)
        truth[y0:y1, x0:x1] = True
        ious = (masks & truth).sum((1, 2)) / (masks | truth).sum((1, 2))
        assert ious.max() > 0.9
        best = int(ious.argmax())
        assert result.boxes[best].tolist() == [x0, y0, x1 - 1, y1 - 1]
    assert np.array_equal(result.areas, masks.sum((1, 2)))
    assert list(result.areas) == sorted(result.areas, reverse=True)
    assert ((0 <= result.stability_score) & (result.stability_score <= 1)).all()
    assert ((0 < result.predicted_iou) & (result.predicted_iou <= 1)).all()


@pytest.fixture(scope="module")
def segmented(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    params = tiny_params()
    project = make_tiny_project(tmp_path_factory.mktemp("seg"), params)
    metrics = run_segment(params, project)
    assert metrics["images"] == 18 and metrics["shards"] == 5 and metrics["failed_images"] == 0
    return project, shard_bytes(project)


def test_every_image_gets_masks_in_its_shard(segmented) -> None:
    project, _ = segmented
    seen = []
    for path in shard_paths(project / layout.SEGMENT_DIR):
        with MaskShard(path) as shard:
            for image_id in shard:
                assert shard.status(image_id) == "ok"
                masks = shard.masks(image_id)
                assert len(masks) > 0 and masks.height == masks.width == 64
                seen.append(image_id)
    assert seen == sorted(seen) and len(seen) == 18


def test_rerun_reuses_shards_and_a_param_change_rebuilds(segmented, tmp_path) -> None:
    project, first = segmented
    kept = tmp_path / "first"
    shutil.copytree(project / layout.SEGMENT_DIR, kept / layout.SEGMENT_DIR)
    params = tiny_params()
    again = run_segment(params, project)
    assert again["shards_reused"] == 5 and shard_bytes(project) == first
    assert "WARNING" not in summary_line(again) and again["no_mask_share"] == 0
    changed = tiny_params(classical=replace(ClassicalParams(), scale=300.0))
    assert run_segment(changed, project)["shards_reused"] == 0
    assert shard_bytes(project) != first
    run_segment(params, project)
    assert_same_shards(project, kept)


def test_a_bad_image_is_recorded_and_the_stage_goes_on(tmp_path) -> None:
    params = tiny_params()
    project = make_tiny_project(tmp_path, params)
    victim = sorted((project / layout.SYNTHETIC_ROOT / "images").rglob("*.png"))[2]
    victim.write_bytes(victim.read_bytes()[:100])
    metrics = run_segment(params, project)
    assert metrics["failed_images"] == 1 and metrics["images"] == 18
    failures = [
        f for p in shard_paths(project / layout.SEGMENT_DIR) for f in MaskShard(p).failures()
    ]
    assert len(failures) == 1 and "truncated" in failures[0][1]


def test_sigkill_mid_run_then_rerun_gives_the_same_bytes(segmented, tmp_path) -> None:
    params = tiny_params(shard_size=2)
    project = make_tiny_project(tmp_path, params)
    (project / "params.yaml").write_text(yaml.safe_dump(as_dict(params)))
    cmd = [sys.executable, "-m", "stages.cli", "segment"]
    out = project / layout.SEGMENT_DIR

    def kill_then_rerun() -> tuple[int, subprocess.CompletedProcess]:
        kill_when(cmd, project, lambda: len(shard_paths(out)) >= 2, poll=0.05)
        written = len(shard_paths(out))
        rerun = subprocess.run(cmd, cwd=project, env=stage_env(), capture_output=True, text=True)
        return written, rerun

    # the killed run and its rerun (subprocesses) go alongside the reference run here
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(kill_then_rerun)
        reference = tiny_params(shard_size=2)
        ref_project = make_tiny_project(tmp_path / "ref", reference)
        run_segment(reference, ref_project)
        written, rerun = killed.result()
    assert 2 <= written < 9, "the kill must land mid-run"
    assert rerun.returncode == 0, rerun.stderr
    assert f"({written} reused" in rerun.stdout
    assert_same_shards(project, ref_project)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def sam_params(checkpoint: Path | None, **sam: object):
    from pipeline.params import SamParams

    return tiny_params(
        backend="sam",
        device="cpu",
        sam=replace(
            SamParams(),
            model_type="tiny",
            checkpoint=str(checkpoint) if checkpoint else None,
            points_per_side=6,
            pred_iou_thresh=0.45,
            stability_score_thresh=0.5,
            crop_n_layers=0,
            images_per_batch=3,
            **sam,
        ),
    )


def test_sam_backend_through_the_stage_matches_the_generator(tmp_path) -> None:
    import torch

    from pipeline.imageio import load_rgb
    from pipeline.segmenters.sam_batched import BatchedSamGenerator
    from pipeline.segmenters.tiny_sam import build_tiny_sam

    checkpoint = tmp_path / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), checkpoint)
    params = sam_params(checkpoint)
    project = make_tiny_project(tmp_path / "p", params)
    metrics = run_segment(params, project)
    assert metrics["failed_images"] == 0 and metrics["masks"] > 0
    path = shard_paths(project / layout.SEGMENT_DIR)[0]
    with MaskShard(path) as shard:
        image_id = next(iter(shard))
        stored = shard.masks(image_id)
        assert shard.backend == "sam"
    from pipeline.tables import read_table

    index = read_table(project / layout.IMAGES_INDEX, "images")[0].to_pylist()
    rel = next(r["path"] for r in index if r["image_id"] == image_id)
    s = params.segment.sam
    direct = BatchedSamGenerator(
        build_tiny_sam(),
        points_per_side=s.points_per_side,
        pred_iou_thresh=s.pred_iou_thresh,
        stability_score_thresh=s.stability_score_thresh,
        crop_n_layers=0,
    ).generate([load_rgb(project / layout.SYNTHETIC_ROOT / rel)])[0]
    assert stored.rles == direct.rles
    assert np.array_equal(stored.boxes, direct.boxes)


def test_sam_checkpoint_errors_name_the_key(tmp_path) -> None:
    from pipeline.errors import ProtomaskError

    params = sam_params(tmp_path / "missing.pth")
    project = make_tiny_project(tmp_path / "p", params)
    with pytest.raises(
        ProtomaskError,
        match=r"segment.sam.checkpoint: SAM checkpoint file "
        r"'.*missing.pth' not found",
    ):
        run_segment(params, project)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    from pipeline.segmenters.loading import load_sam

    with pytest.raises(ProtomaskError, match="garbage.pth is not a tiny SAM checkpoint"):
        load_sam(sam_params(garbage).segment, "cpu")


def test_a_model_type_that_does_not_fit_the_checkpoint_stops_before_any_worker(
    tmp_path, monkeypatch
) -> None:
    """vit_b given, tiny weights found: one line naming both, and no dask cluster started."""
    import torch
    from click.testing import CliRunner

    import pipeline.sharded
    from pipeline.segmenters.tiny_sam import build_tiny_sam
    from stages.cli import main

    def no_cluster(*args, **kwargs):
        raise AssertionError("a dask cluster was started")

    monkeypatch.setattr(pipeline.sharded, "dask_client", no_cluster)
    checkpoint = tmp_path / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), checkpoint)
    params = sam_params(checkpoint)
    project = make_tiny_project(tmp_path / "p", params)
    wrong = replace(
        params, segment=replace(params.segment, sam=replace(params.segment.sam, model_type="vit_b"))
    )
    (project / "params.yaml").write_text(yaml.safe_dump(as_dict(wrong)))
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["segment", "--params", "params.yaml"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert result.stderr == (
        f"protomask segment: segment.sam.checkpoint: {checkpoint} holds a tiny SAM (image "
        f"encoder width 32, 2 blocks) but segment.sam.model_type is vit_b (image encoder "
        f"width 768, 12 blocks); set segment.sam.model_type: tiny\n"
    )
    deeper = tmp_path / "deeper.pth"
    torch.save(build_tiny_sam(encoder_depth=3).state_dict(), deeper)
    from pipeline.errors import ProtomaskError

    with pytest.raises(
        ProtomaskError,
        match=r"deeper.pth is not a tiny SAM checkpoint: its "
        r"tensors show image encoder width 32, 3 blocks, "
        r"tiny has image encoder width 32, 2 blocks",
    ):
        run_segment(
            replace(
                params,
                segment=replace(
                    params.segment, sam=replace(params.segment.sam, checkpoint=str(deeper))
                ),
            ),
            project,
        )


def test_metrics_hold_no_wall_clock_and_a_maskless_run_warns(tmp_path, monkeypatch) -> None:
    """Two runs (the second reuses every shard) leave metrics/segment.json byte-identical;
    the wall-clock facts go to logs/segment.json. With no mask anywhere the summary line
    warns, and the stage still exits 0."""
    from click.testing import CliRunner

    from stages.cli import main

    params = tiny_params(classical=replace(ClassicalParams(), max_area_fraction=0.0))
    project = make_tiny_project(tmp_path, params)
    (project / "params.yaml").write_text(yaml.safe_dump(as_dict(params)))
    monkeypatch.chdir(project)
    first = CliRunner().invoke(main, ["segment", "--params", "params.yaml"])
    assert first.exit_code == 0, first.output
    metrics = (project / layout.SEGMENT_METRICS).read_bytes()
    again = CliRunner().invoke(main, ["segment", "--params", "params.yaml"])
    assert again.exit_code == 0 and "(5 reused" in again.stdout
    assert (project / layout.SEGMENT_METRICS).read_bytes() == metrics
    values = json.loads(metrics)
    assert values["masks_per_image"] == 0 and values["no_mask_share"] == 1.0
    assert values["images_without_masks"] == 18
    assert not {"shards_reused", "seconds", "images_per_second"} & set(values)
    log = json.loads((project / layout.run_log("segment")).read_text())
    assert log["shards_reused"] == 5 and log["shards_damaged"] == [] and "seconds" in log
    assert again.stdout.count("\n") == 1 and again.stdout.strip().endswith(
        "0.0 masks per image; 100 % of images without a mask; 0 failed; WARNING: 100 % of "
        "images have no mask; their views will be the whole image; check segment params"
    )
