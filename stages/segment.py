"""``protomask segment``: masks for every image into HDF5 shards."""
from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import stage_command


@stage_command("segment", help=(
    "Segment every image of the images index with the backend of params segment (Segment "
    "Anything from a local checkpoint, or the offline classical segmenter) into HDF5 mask "
    f"shards under {layout.SEGMENT_DIR}, through dask (a local cluster or segment.scheduler). "
    "Finished shards are kept on a rerun; an interrupted run resumes."))
def segment(params: Params) -> None:
    from pipeline.segment import run_segment

    m = run_segment(params)
    speed = (f", {m['images_per_second']:.2f} images/s" if m["images_per_second"] else "")
    click.echo(f"segment: {m['images']} images in {m['shards']} shards "
               f"({m['shards_reused']} reused{speed}); {m['masks_per_image']} masks per image; "
               f"{m['failed_images']} failed")
