"""Speed-only settings keep finished mask shards: segment's shard fingerprints ignore them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import layout
from pipeline.params import Params, SamParams, SegmentParams
from pipeline.segment import plan_tasks
from pipeline.tables import write_table


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, Path]:
    """A project with a 5-image index (no image files: planning reads only the index) and
    a tiny SAM checkpoint."""
    import torch

    from pipeline.segmenters.tiny_sam import build_tiny_sam

    root = tmp_path_factory.mktemp("plan")
    rows = [
        {
            "image_id": i,
            "path": f"images/a/{i}.png",
            "class_id": 0,
            "class_name": "a",
            "split": "train",
            "width": 8,
            "height": 8,
            "pixel_hash": f"h{i}",
            "object_box_xywh": None,
            "parts": None,
            "segmentation_path": None,
        }
        for i in range(1, 6)
    ]
    write_table(rows, root / layout.IMAGES_INDEX, "images", fingerprint="index-fp")
    checkpoint = root / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), checkpoint)
    return root, checkpoint


def shard_fingerprints(root: Path, segment: SegmentParams) -> list[str]:
    params = replace(Params(), segment=segment)
    return [t.fingerprint for t in plan_tasks(params, root, root / layout.SEGMENT_DIR)]


def sam_segment(checkpoint: Path, **changes: object) -> SegmentParams:
    sam = replace(SamParams(), model_type="tiny", checkpoint=str(checkpoint))
    outer = {k: changes.pop(k) for k in ("device", "workers", "scheduler") if k in changes}
    return replace(
        SegmentParams(), backend="sam", shard_size=2, sam=replace(sam, **changes), **outer
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"images_per_batch": 16},
        {"points_per_batch": 64},
        {"workers": 7},
        {"device": "cuda:1"},
        {"scheduler": "tcp://10.0.0.5:8786"},
        {"images_per_batch": 1, "points_per_batch": 1, "workers": 1, "device": "cpu"},
    ],
)
def test_speed_only_settings_keep_the_shard_fingerprints(project, changes) -> None:
    root, checkpoint = project
    base = shard_fingerprints(root, sam_segment(checkpoint))
    assert len(base) == 3 and len(set(base)) == 3
    assert shard_fingerprints(root, sam_segment(checkpoint, **changes)) == base


@pytest.mark.parametrize(
    "changes", [{"pred_iou_thresh": 0.5}, {"bf16": True}, {"points_per_side": 8}]
)
def test_result_settings_change_every_shard_fingerprint(project, changes) -> None:
    root, checkpoint = project
    base = shard_fingerprints(root, sam_segment(checkpoint))
    other = shard_fingerprints(root, sam_segment(checkpoint, **changes))
    assert not set(other) & set(base)
