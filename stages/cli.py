"""The ``protomask`` command: one subcommand per DVC stage."""
from __future__ import annotations

import click

from stages.prepare import prepare
from stages.segment import segment
from stages.synthesize import synthesize


@click.group(help="ProtoMask: segmentation-guided prototype learning, stage by stage. "
                  "Each subcommand is one stage of dvc.yaml; run them all with 'dvc repro'.")
@click.version_option(package_name="protomask")
def main() -> None:
    """Entry point of the ``protomask`` console script."""


main.add_command(synthesize)
main.add_command(prepare)
main.add_command(segment)

if __name__ == "__main__":
    main()
