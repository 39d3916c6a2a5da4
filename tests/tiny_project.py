"""A tiny synthetic project (dataset + images index) for stage tests, built in-process."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipeline import layout
from pipeline.params import DataParams, Params, SegmentParams, SyntheticParams
from pipeline.prepare import run_prepare
from pipeline.synthetic import generate_synthetic

TINY_SYNTHETIC = SyntheticParams(num_classes=3, images_per_class=6, image_size=64)


def tiny_params(**segment: object) -> Params:
    """Default params shrunk to a few tiny images, one worker, small shards."""
    return replace(Params(), data=replace(DataParams(), synthetic=TINY_SYNTHETIC),
                   segment=replace(SegmentParams(workers=1, shard_size=4), **segment))


def make_tiny_project(root: Path, params: Params) -> Path:
    """Generate the synthetic set and the images index under ``root``."""
    generate_synthetic(root / layout.SYNTHETIC_ROOT, params.data.synthetic)
    run_prepare(params.data, root)
    return root
