"""The ``protomask`` command: one subcommand per DVC stage."""

from __future__ import annotations

import click

from stages.crops import crops
from stages.evaluate import compare, evaluate
from stages.prepare import prepare
from stages.segment import segment
from stages.show import show
from stages.synthesize import synthesize
from stages.train import train


@click.group(
    help="ProtoMask: segmentation-guided prototype learning, stage by stage. "
    "Each subcommand is one stage of dvc.yaml (show only draws one image's views); "
    "run them all with 'dvc repro'."
)
@click.version_option(package_name="protomask")
def main() -> None:
    """Entry point of the ``protomask`` console script."""


main.add_command(synthesize)
main.add_command(prepare)
main.add_command(segment)
main.add_command(crops)
main.add_command(train)
main.add_command(evaluate)
main.add_command(compare)
main.add_command(show)

if __name__ == "__main__":
    main()
