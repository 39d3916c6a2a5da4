"""``protomask synthesize``: write the built-in synthetic dataset in CUB layout."""

from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import stage_command


@stage_command(
    "synthesize",
    help=(
        "Generate the synthetic fine-grained dataset (CUB-200-2011 layout with part keypoints "
        "and object segmentations) into data/synthetic from params data.synthetic. With "
        "data.source other than synthetic it only writes a note there. It replaces data/synthetic "
        "only when that folder is absent, empty or written by synthesize (it carries "
        "WRITTEN_BY_PROTOMASK.txt): it never deletes files it did not write."
    ),
)
def synthesize(params: Params) -> None:
    """Write the synthetic dataset (or its note) and print what was written."""
    from pipeline.synthetic import generate_synthetic, write_not_used

    if params.data.source != "synthetic":
        write_not_used(layout.SYNTHETIC_ROOT, params.data.source)
        click.echo(f"synthesize: data.source is {params.data.source}; nothing to generate")
        return
    generate_synthetic(layout.SYNTHETIC_ROOT, params.data.synthetic)
    s = params.data.synthetic
    click.echo(
        f"synthesize: {s.num_classes} classes x {s.images_per_class} images of "
        f"{s.image_size}px written to {layout.SYNTHETIC_ROOT}"
    )
