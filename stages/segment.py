"""``protomask segment``: masks for every image into HDF5 shards."""

from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import stage_command


@stage_command(
    "segment",
    help=(
        "Segment every image of the images index with the backend of params segment (Segment "
        "Anything from a local checkpoint, or the offline classical segmenter) into HDF5 mask "
        f"shards under {layout.SEGMENT_DIR}, through dask (a local cluster or segment.scheduler). "
        "Finished shards are kept on a rerun when they read back intact (a damaged one is "
        "named and rebuilt); an interrupted run resumes. Wall-clock facts go to logs/segment.json."
    ),
)
def segment(params: Params) -> None:
    """Run the segment stage and print its summary line."""
    from pipeline.segment import run_segment, summary_line

    click.echo(summary_line(run_segment(params)))
