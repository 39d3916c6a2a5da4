"""The ``protomask`` command: one subcommand per DVC stage."""

from __future__ import annotations

import click

from pipeline.errors import ParamsError
from pipeline.progress import ENV_VAR, configure_logging
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
    "run them all with 'dvc repro'. Progress (bars on a terminal, else plain lines) and "
    f"log lines go to stderr at INFO, or the level that {ENV_VAR} names (e.g. WARNING)."
)
@click.version_option(package_name="protomask")
@click.option(
    "-q", "--quiet", count=True, help="Only warnings and errors: no progress (overrides the env)."
)
@click.option("-v", "--verbose", count=True, help="Debug lines too (overrides the env).")
def main(quiet: int, verbose: int) -> None:
    """Entry point of the ``protomask`` console script: set up the log level."""
    try:
        configure_logging(verbose - quiet)
    except ParamsError as exc:
        raise click.UsageError(str(exc)) from None


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
