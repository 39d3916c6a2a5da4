"""``protomask show IMAGE_ID``: a PNG of one image with its view boxes and its M crops."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import stage_command


@stage_command(
    "show",
    locked=False,
    help=(
        "Write a PNG of image IMAGE_ID with the boxes of its views drawn (one colour and number "
        "per view) and its M crops beside it, read from the images index, "
        f"{layout.CROPS_INDEX} and the crop shards (run crops first), to check segmentation and "
        "crops at a glance. Not a pipeline stage: nothing is recomputed."
    ),
)
@click.argument("image_id", type=int)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG to write [default: show-IMAGE_ID.png].",
)
def show(params: Params, image_id: int, out: Path | None) -> None:
    """Write the contact sheet of one image and print its path."""
    from pipeline.show import write_sheet

    path = write_sheet(image_id, out or Path(f"show-{image_id}.png"), Path(params.data.root))
    click.echo(f"show: wrote {path}")
