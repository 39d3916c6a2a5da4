"""Comparing the mask shards of two projects (shared by the segment and dask tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.mask_shards import MaskShard, shard_paths


def shard_bytes(project: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in shard_paths(project / layout.SEGMENT_DIR)}


def shard_content(path: Path) -> list:
    """Everything a shard says, decoded (to tell a content change from a byte change)."""
    with MaskShard(path) as shard:
        return [
            (
                i,
                shard.status(i),
                [
                    (
                        bytes(r),
                        *map(
                            np.ndarray.tolist,
                            (m.boxes, m.areas, m.predicted_iou, m.stability_score, m.points),
                        ),
                    )
                    for m in [shard.masks(i)]
                    for r in m.rles
                ],
            )
            for i in shard
        ]


def assert_same_shards(a: Path, b: Path) -> None:
    """Same shard files with the same bytes; says which shard and whether content differs."""
    names_a = [p.name for p in shard_paths(a / layout.SEGMENT_DIR)]
    assert names_a == [p.name for p in shard_paths(b / layout.SEGMENT_DIR)]
    for name in names_a:
        pa, pb = a / layout.SEGMENT_DIR / name, b / layout.SEGMENT_DIR / name
        if pa.read_bytes() != pb.read_bytes():
            same = shard_content(pa) == shard_content(pb)
            raise AssertionError(f"{name}: bytes differ, content {'same' if same else 'differs'}")
