"""``protomask crops``: the M views of every image into HDF5 crop shards and a crops index."""
from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import stage_command


@stage_command("crops", help=(
    "Cut the M views of every image (params crops) from the boxes of its masks in "
    f"{layout.SEGMENT_DIR}: one HDF5 crop shard per mask shard and the crops index "
    f"{layout.CROPS_INDEX} (one row per view), plus {layout.CROPS_METRICS}. Runs through "
    "dask like segment (segment.workers, segment.scheduler); finished shards are kept on a "
    "rerun; an interrupted run resumes."))
def crops(params: Params) -> None:
    from pipeline.crops import run_crops

    m = run_crops(params)
    speed = f", {m['images_per_second']:.1f} images/s" if m["images_per_second"] else ""
    click.echo(f"crops: {m['images']} images x {params.crops.num_views} views in {m['shards']} "
               f"shards ({m['shards_reused']} reused{speed}); {m['mean_distinct_views']} "
               f"distinct views per image; {m['fallback_images']} whole-image fallbacks")
