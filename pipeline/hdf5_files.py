"""What both HDF5 artifacts (mask shards, crop shards) share: the format/version stamp.

Each shard carries ``format``, ``version`` and ``fingerprint`` attributes. A rerun keeps
a shard only when :func:`stamped_fingerprint` matches; readers open it with
:func:`open_stamped`, which names the file and what to rerun when it is not what they read.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import ArtifactError


def attr_text(value: object) -> str:
    """An HDF5 string attribute (fixed-length bytes or str) as str."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def stamped_fingerprint(path: Path, fmt: str, version: int) -> str | None:
    """The fingerprint of a complete shard of this format and version, else None."""
    try:
        with h5py.File(path, "r") as f:
            if attr_text(f.attrs.get("format")) != fmt or int(f.attrs.get("version", -1)) != version:
                return None
            return attr_text(f.attrs["fingerprint"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def open_stamped(path: Path, fmt: str, version: int, kind: str, stage: str) -> h5py.File:
    """Open ``path`` for reading; an ArtifactError naming it when it is unreadable, of
    another format, or of another version (``kind``: "mask shard"; ``stage``: to rerun)."""
    try:
        f = h5py.File(path, "r")
        found, found_version = attr_text(f.attrs.get("format")), f.attrs.get("version")
    except OSError as exc:
        raise ArtifactError(f"{path}: not a readable {kind} ({exc})") from None
    if found != fmt:
        f.close()
        raise ArtifactError(f"{path}: not a protomask {kind} (format {found!r})")
    if found_version is None or int(found_version) != version:
        f.close()
        raise ArtifactError(f"{path}: {kind} version {found_version} is not known to this "
                            f"code (it reads version {version}); rerun {stage}")
    return f
