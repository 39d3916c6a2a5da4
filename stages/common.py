"""What every stage command shares: ``--params``, validation, one-line errors."""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

import click

from pipeline import layout
from pipeline.errors import ProtomaskError
from pipeline.params import Params, load_params


def model_option(help: str) -> Callable:
    """``--model protomask|protopnet`` (default protomask), shared by train and evaluate."""
    return click.option("--model", "kind", type=click.Choice(list(layout.MODELS)),
                        default=layout.MODELS[0], show_default=True, help=help)


def one_line(exc: ProtomaskError) -> str:
    """The error's message; for one re-raised by a DataLoader worker (torch wraps the
    worker's traceback into the message), the original message from its last line."""
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def stage_command(name: str, help: str) -> Callable[[Callable[..., Any]], click.Command]:
    """Turn ``fn(params, **options)`` into a click command with ``--params PATH``.

    The params file is validated before the stage starts; a ProtomaskError (bad params,
    bad data, bad artifact) ends the command with its message on one line and exit 1.
    """

    def decorate(fn: Callable[..., Any]) -> click.Command:
        @click.command(name, help=help)
        @click.option("--params", "params_path", default="params.yaml", show_default=True,
                      type=click.Path(dir_okay=False), help="The params file to read.")
        @functools.wraps(fn)
        def command(params_path: str, **options: Any) -> None:
            os.environ.setdefault("DVC_NO_ANALYTICS", "1")
            try:
                params: Params = load_params(params_path)
                fn(params, **options)
            except ProtomaskError as exc:
                click.echo(f"protomask {name}: {one_line(exc)}", err=True)
                sys.exit(1)

        return command

    return decorate
