"""What every stage command shares: ``--params``, validation, one-line errors."""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import click

from pipeline import layout
from pipeline.errors import ProtomaskError
from pipeline.params import Params, load_params


def model_option(help: str) -> Callable:
    """``--model protomask|protopnet`` (default protomask), shared by train and evaluate."""
    return click.option(
        "--model",
        "kind",
        type=click.Choice(list(layout.MODELS)),
        default=layout.MODELS[0],
        show_default=True,
        help=help,
    )


def seed_option() -> Callable:
    """``--seed N`` (one of params train.seeds; default: each of them in turn), shared by
    train and evaluate; DVC's matrix passes one seed per stage."""
    return click.option(
        "--seed",
        "seed",
        type=int,
        default=None,
        help="The training seed (one of params train.seeds). Default: every seed listed there.",
    )


def chosen_seeds(params: Params, seed: int | None) -> list[int]:
    """The seeds a train/evaluate command works on: ``seed`` (checked against train.seeds
    where it is used), or all of train.seeds."""
    return list(params.train.seeds) if seed is None else [seed]


def one_line(exc: ProtomaskError) -> str:
    """The error's message; for one re-raised by a DataLoader worker (torch wraps the
    worker's traceback into the message), the original message from its last line."""
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


# Errors of the file system that a user fixes outside protomask (space, permissions).
STORAGE_ERRNOS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EFBIG: "free some space or raise the file-size limit",
    errno.EROFS: "make the folder writable",
    errno.EACCES: "make the folder writable",
    errno.EPERM: "make the folder writable",
}
STORAGE_WORDS = (
    "No space left on device",
    "Disk quot",
    "File too large",
    "Read-only file system",
    "Permission denied",
)


def storage_error(exc: BaseException) -> Optional[str]:
    """One line for a full disk, a file-size limit or a read-only / forbidden folder met
    anywhere (also inside h5py, torch.save or a dask worker), else None."""
    code = getattr(exc, "errno", None)
    text = " ".join(str(exc).split())
    if code not in STORAGE_ERRNOS:
        code = next((c for c in STORAGE_ERRNOS if os.strerror(c) in text), None)
        if code is None and not any(w in text for w in STORAGE_WORDS):
            return None
    what = os.strerror(code) if code is not None else text[:200]
    where = getattr(exc, "filename", None)
    target = f"cannot write {where}" if where else f"cannot write ({text[:200]})"
    todo = STORAGE_ERRNOS.get(code, "free some space or make the folder writable")
    return (
        f"{target}: {what}; {todo}, then rerun (finished work is kept, nothing "
        f"half-written is left behind)"
    )


def lock_name(name: str, options: dict[str, Any]) -> str:
    """The lock of a stage's outputs: one per stage, per model for train and evaluate."""
    return f"{name}-{options['kind']}" if "kind" in options else name


@contextmanager
def output_lock(name: str, command: str) -> Iterator[None]:
    """Hold ``.protomask/locks/<name>.lock`` (an advisory lock) while a stage writes its
    outputs; a second run of the same stage in the same project stops in one line. Under
    torchrun only rank 0 takes it (all ranks of one run share the outputs)."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    from pipeline import layout

    path = Path(layout.LOCKS) / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ProtomaskError(
                f"another '{command}' is running in this project (pid "
                f"{holder}, lock {path}); wait for it to end or stop it, "
                f"then rerun"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage_command(
    name: str, help: str, locked: bool = True
) -> Callable[[Callable[..., Any]], click.Command]:
    """Turn ``fn(params, **options)`` into a click command with ``--params PATH``.

    The params file is validated before the stage starts; a ProtomaskError (bad params,
    bad data, bad artifact) or a full / read-only disk ends the command with its message
    on one line and exit 1. ``locked``: hold the stage's output lock while it runs.
    """

    def decorate(fn: Callable[..., Any]) -> click.Command:
        @click.command(name, help=help)
        @click.option(
            "--params",
            "params_path",
            default="params.yaml",
            show_default=True,
            type=click.Path(dir_okay=False),
            help="The params file to read.",
        )
        @functools.wraps(fn)
        def command(params_path: str, **options: Any) -> None:
            os.environ.setdefault("DVC_NO_ANALYTICS", "1")
            try:
                params: Params = load_params(params_path)
                command_line = " ".join(
                    ["protomask", name]
                    + [f"--model {v}" for k, v in options.items() if k == "kind"]
                    + [f"--seed {v}" for k, v in options.items() if k == "seed" and v is not None]
                )
                if locked:
                    with output_lock(lock_name(name, options), command_line):
                        fn(params, **options)
                else:
                    fn(params, **options)
            except ProtomaskError as exc:
                click.echo(f"protomask {name}: {one_line(exc)}", err=True)
                sys.exit(1)
            except (OSError, RuntimeError) as exc:
                line = storage_error(exc)
                if line is None:
                    raise
                click.echo(f"protomask {name}: {line}", err=True)
                sys.exit(1)

        return command

    return decorate
