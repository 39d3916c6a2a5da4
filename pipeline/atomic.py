"""Write-then-rename helpers: an interrupted stage never leaves a half-written artifact."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def temporary_sibling(path: Path) -> Path:
    """A name beside ``path`` that a crash may leave behind but no reader ever opens."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it over ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(
    path: Path,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = True,
    allow_nan: bool = True,
    default: Callable[[Any], Any] | None = None,
    newline: bool = True,
) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (the one JSON writer of the project).

    Args:
        path: the file to (re)place; its folder is created.
        obj: what to write.
        indent, sort_keys, allow_nan, default: as for :func:`json.dumps`.
        newline: end the text with a newline.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=default)
    with atomic_file(path) as tmp:
        tmp.write_text(text + ("\n" if newline else ""), encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete what an interrupted write of this module left under ``directory`` (its
    ``.<name>.tmp-<pid>`` files and folders, ``.<name>.old-<pid>`` folders); return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    for path in sorted(found, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return found
