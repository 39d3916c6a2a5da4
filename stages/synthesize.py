"""``protomask synthesize``: write the built-in synthetic dataset in CUB layout."""
from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from pipeline.atomic import atomic_dir
from stages.common import stage_command


@stage_command("synthesize", help=(
    "Generate the synthetic fine-grained dataset (CUB-200-2011 layout with part keypoints "
    "and object segmentations) into data/synthetic from params data.synthetic. With "
    "data.source other than synthetic it only writes a note there."))
def synthesize(params: Params) -> None:
    from pipeline.synthetic import generate_synthetic

    if params.data.source != "synthetic":
        with atomic_dir(layout.SYNTHETIC_ROOT) as tmp:
            (tmp / "NOT_USED.txt").write_text(
                f"data.source is {params.data.source}: the synthetic set is not generated.\n")
        click.echo(f"synthesize: data.source is {params.data.source}; nothing to generate")
        return
    generate_synthetic(layout.SYNTHETIC_ROOT, params.data.synthetic)
    s = params.data.synthetic
    click.echo(f"synthesize: {s.num_classes} classes x {s.images_per_class} images of "
               f"{s.image_size}px written to {layout.SYNTHETIC_ROOT}")
