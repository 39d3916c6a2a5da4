"""The segment stage: classical masks, shards through dask, resume, failures, SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import layout
from pipeline.mask_shards import MaskShard, shard_paths
from pipeline.params import ClassicalParams, as_dict
from pipeline.segment import run_segment
from pipeline.segmenters.classical import segment_classical
from tests.tiny_project import make_tiny_project, tiny_params


def test_classical_finds_flat_regions_with_consistent_records() -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((64, 80, 3)) * 40 + 100).astype(np.uint8)
    image[10:30, 5:25] = (230, 20, 20)
    image[40:60, 50:78] = (20, 20, 230)
    result = segment_classical(image, ClassicalParams(sigma=0.0))
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


def shard_bytes(project: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in shard_paths(project / layout.SEGMENT_DIR)}


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
    params = tiny_params()
    again = run_segment(params, project)
    assert again["shards_reused"] == 5 and shard_bytes(project) == first
    changed = tiny_params(classical=replace(ClassicalParams(), scale=300.0))
    assert run_segment(changed, project)["shards_reused"] == 0
    assert shard_bytes(project) != first
    run_segment(params, project)
    assert shard_bytes(project) == first


def test_a_bad_image_is_recorded_and_the_stage_goes_on(tmp_path) -> None:
    params = tiny_params()
    project = make_tiny_project(tmp_path, params)
    victim = sorted((project / layout.SYNTHETIC_ROOT / "images").rglob("*.png"))[2]
    victim.write_bytes(victim.read_bytes()[:100])
    metrics = run_segment(params, project)
    assert metrics["failed_images"] == 1 and metrics["images"] == 18
    failures = [f for p in shard_paths(project / layout.SEGMENT_DIR)
                for f in MaskShard(p).failures()]
    assert len(failures) == 1 and "truncated" in failures[0][1]


def test_sigkill_mid_run_then_rerun_gives_the_same_bytes(segmented, tmp_path) -> None:
    _, uninterrupted = segmented
    params = tiny_params(shard_size=2)
    project = make_tiny_project(tmp_path, params)
    (project / "params.yaml").write_text(yaml.safe_dump(as_dict(params)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "stages.cli", "segment"]
    proc = subprocess.Popen(cmd, cwd=project, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = project / layout.SEGMENT_DIR
    deadline = time.time() + 120
    while time.time() < deadline and len(shard_paths(out)) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(shard_paths(out))
    assert 2 <= written < 9, "the kill must land mid-run"
    rerun = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({written} reused" in rerun.stdout or "reused" in rerun.stdout
    reference = tiny_params(shard_size=2)
    ref_project = make_tiny_project(tmp_path / "ref", reference)
    run_segment(reference, ref_project)
    assert shard_bytes(project) == shard_bytes(ref_project)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
