"""``protomask crops``: the M views of every image into HDF5 crop shards and a crops index."""

from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import stage_command


@stage_command(
    "crops",
    help=(
        "Cut the M views of every image (params crops) from the boxes of its masks in "
        f"{layout.SEGMENT_DIR}: one HDF5 crop shard per mask shard and the crops index "
        f"{layout.CROPS_INDEX} (one row per view), plus {layout.CROPS_METRICS}. Runs through "
        "dask like segment (crops.workers, segment.scheduler); finished shards are kept on a "
        "rerun when they read back intact (a damaged one is named and rebuilt); an interrupted "
        "run resumes. Wall-clock facts go to logs/crops.json."
    ),
)
def crops(params: Params) -> None:
    """Run the crops stage and print its summary line."""
    from pipeline.crops import run_crops, summary_line

    click.echo(summary_line(run_crops(params), params.crops.num_views))
