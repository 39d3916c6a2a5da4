"""``protomask prepare``: the images index with train/val/test splits."""

from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import stage_command


@stage_command(
    "prepare",
    help=(
        "Read the dataset named by params data (CUB-200-2011 layout, class folders, or the "
        "synthetic set), decode every image, drop duplicates, carve a stratified validation "
        f"split from train, and write {layout.IMAGES_INDEX} (plus rejects and duplicates "
        f"tables and {layout.PREPARE_METRICS}). It stops with one line on a dataset of fewer "
        "than 2 classes or with an empty train, validation or test split."
    ),
)
def prepare(params: Params) -> None:
    """Run the prepare stage and print its summary line."""
    from pipeline.prepare import run_prepare

    m = run_prepare(params.data)
    extra = "".join(
        f", {m[key]} {what}"
        for key, what in (
            ("links_rejected", "links out of their class folder not read"),
            ("segmentations_rejected", "segmentation PNGs unreadable (images kept without them)"),
        )
        if m[key]
    )
    click.echo(
        f"prepare: {m['images']} images in {m['classes']} classes "
        f"(train {m['train']}, val {m['val']}, test {m['test']}); "
        f"{m['rejects']} rejected, {m['duplicates_removed']} duplicates removed{extra}"
        + (f"; see {layout.REJECTS_TABLE}" if extra else "")
    )
