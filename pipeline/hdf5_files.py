"""What both HDF5 artifacts (mask shards, crop shards) share: the stamp and the integrity check.

Each shard carries ``format``, ``version`` and ``fingerprint`` attributes (what it is and
which inputs made it) and ``content_sha256``: a digest of every dataset's name, dtype,
shape and bytes and of the other attributes. Every dataset is chunked with HDF5's
Fletcher-32 filter, so a damaged chunk fails its read wherever it is read (training,
evaluation), and the digest covers what chunk checksums cannot: an empty dataset (no
chunk to check, only a shape), a dataset gone missing, an attribute.

A rerun keeps a shard only when :func:`check_shard` finds it current *and* intact (a full
read of every dataset); readers open it with :func:`open_stamped`, which names the file
and what to rerun when it is not what they read, and wrap data reads in :func:`reading`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import ArtifactError, ProtomaskError

DIGEST_ATTR = "content_sha256"
_READ_BLOCK_BYTES = 1 << 26  # the verification reads a dataset in blocks of ~64 MiB


def attr_text(value: object) -> str:
    """An HDF5 string attribute (fixed-length bytes or str) as str."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def h5_reason(exc: BaseException) -> str:
    """The informative part of an h5py error ("Can't read data (filter returned failure
    during read)" -> "filter returned failure during read")."""
    text = str(exc.args[0]) if exc.args else str(exc)
    found = re.search(r"\(([^()]*)\)\s*$", text)
    return found.group(1) if found else text


def _is_checksum_failure(reason: str) -> bool:
    """Whether an h5py read failed in the filter pipeline; Fletcher-32 is checked first
    there (h5py appends it last on write), so this is a chunk failing its checksum."""
    return "filter" in reason or "checksum" in reason


# ------------------------------------------------------------------------ writing
def _attr_bytes(value: object) -> bytes:
    """An attribute value as bytes for the digest (stable across numpy versions)."""
    if isinstance(value, str):
        return b"str:" + value.encode("utf-8")
    array = np.asarray(value)
    return array.dtype.str.encode() + b":" + array.tobytes()


def _digest(datasets: Mapping[str, bytes], attrs: Mapping[str, object]) -> str:
    """The content digest from per-dataset digests and the attributes (digest excluded)."""
    total = hashlib.sha256()
    for name in sorted(datasets):
        total.update(b"dataset\0" + name.encode() + b"\0" + datasets[name])
    for name in sorted(k for k in attrs if k != DIGEST_ATTR):
        total.update(b"attr\0" + name.encode() + b"\0" + _attr_bytes(attrs[name]))
    return total.hexdigest()


def _dataset_digest(dtype: np.dtype, shape: tuple[int, ...], blocks: Iterator[np.ndarray]) -> bytes:
    """Digest of one dataset: its dtype, shape and C-order bytes (C-contiguous blocks)."""
    one = hashlib.sha256(f"{np.dtype(dtype).str}{tuple(shape)}".encode())
    for block in blocks:
        if block.size:
            one.update(memoryview(block).cast("B"))
    return one.digest()


class CheckedWriter:
    """Creates checksummed datasets in a shard being written, then stamps its digest."""

    def __init__(self, file: h5py.File) -> None:
        self.file = file
        self._digests: dict[str, bytes] = {}

    def dataset(
        self, name: str, data: np.ndarray, *, rows_per_chunk: int, **filters: object
    ) -> h5py.Dataset:
        """A dataset with a Fletcher-32 checksum per chunk of ``rows_per_chunk`` rows.
        Empty data is chunked too (HDF5 needs a resizable first axis for that): it has no
        chunk to check, the content digest covers its dtype and shape."""
        data = np.ascontiguousarray(data)
        rows = max(1, min(len(data), rows_per_chunk))
        maxshape = (None,) + data.shape[1:] if len(data) == 0 else None
        ds = self.file.create_dataset(
            name,
            data=data,
            chunks=(rows,) + data.shape[1:],
            maxshape=maxshape,
            fletcher32=True,
            track_times=False,
            **filters,
        )
        stored = np.ascontiguousarray(data, dtype=ds.dtype)
        self._digests[ds.name.lstrip("/")] = _dataset_digest(ds.dtype, ds.shape, iter([stored]))
        return ds

    def stamp(self) -> None:
        """Write the content digest; call once, after every dataset and attribute."""
        self.file.attrs[DIGEST_ATTR] = np.bytes_(_digest(self._digests, dict(self.file.attrs)))


# ------------------------------------------------------------------------ checking
def _blocks(ds: h5py.Dataset) -> Iterator[np.ndarray]:
    """A dataset's content in C order, read in C-contiguous blocks of whole rows."""
    if ds.shape is None or len(ds.shape) == 0:
        yield np.ascontiguousarray(ds[()])
        return
    row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
    step = max(1, _READ_BLOCK_BYTES // row_bytes)
    for start in range(0, ds.shape[0], step):
        yield np.ascontiguousarray(ds[start : start + step])


def content_damage(file: h5py.File) -> str | None:
    """Read every dataset in full and recompute the digest: None when the file is intact,
    else what is wrong (e.g. "checksum error in masks/rle_data")."""
    names: list[str] = []
    try:
        file.visititems(
            lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None
        )
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        return f"unreadable structure: {h5_reason(exc)}"
    digests = {}
    for name in sorted(names):
        try:
            ds = file[name]
            digests[name] = _dataset_digest(ds.dtype, ds.shape, _blocks(ds))
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            reason = h5_reason(exc)
            return (
                f"checksum error in {name}"
                if _is_checksum_failure(reason)
                else f"read error in {name}: {reason}"
            )
    try:
        stored = file.attrs.get(DIGEST_ATTR)
        expected = _digest(digests, dict(file.attrs))
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        return f"unreadable attributes: {h5_reason(exc)}"
    if stored is None:
        return "no content digest"
    return None if attr_text(stored) == expected else "content digest mismatch"


@dataclass(frozen=True)
class ShardCheck:
    """Whether an existing shard can be kept, and if not because it is damaged, why."""

    reusable: bool
    damage: str | None = None


def check_shard(path: Path | str, fmt: str, version: int, fingerprint: str) -> ShardCheck:
    """Keep a shard only when it is of this format and version, has this fingerprint and
    every dataset reads back intact. A missing, foreign, old or stale shard is simply not
    reusable; an unreadable one, or one that fails the full read, is ``damage``d."""
    path = Path(path)
    if not path.exists():
        return ShardCheck(False)
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        return ShardCheck(False, f"not a readable HDF5 file: {h5_reason(exc)}")
    with file:
        try:
            current = (
                attr_text(file.attrs.get("format")) == fmt
                and int(file.attrs.get("version", -1)) == version
                and attr_text(file.attrs.get("fingerprint")) == fingerprint
            )
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            return ShardCheck(False, f"unreadable attributes: {h5_reason(exc)}")
        if not current:
            return ShardCheck(False)
        damage = content_damage(file)
    return ShardCheck(damage is None, damage)


# ------------------------------------------------------------------------ reading
def open_stamped(
    path: Path, fmt: str, version: int | tuple[int, ...], kind: str, stage: str
) -> h5py.File:
    """Open ``path`` for reading; an ArtifactError naming it when it is unreadable, of
    another format, or of a version not in ``version`` (one, or those the reader knows;
    ``kind``: "mask shard"; ``stage``: to rerun)."""
    versions = (version,) if isinstance(version, int) else tuple(version)
    try:
        f = h5py.File(path, "r")
        found, found_version = attr_text(f.attrs.get("format")), f.attrs.get("version")
    except OSError as exc:
        if _out_of_file_handles(exc):
            raise ProtomaskError(
                f"{path}: cannot open it: this process has too many open files (ulimit -n "
                f"{_open_file_limit()}); raise the limit (ulimit -n 4096) and rerun: the "
                f"file itself is fine"
            ) from None
        raise ArtifactError(
            f"{path}: not a readable {kind} ({exc}); rerun {stage} (dvc repro rebuilds it)"
        ) from None
    if found != fmt:
        f.close()
        raise ArtifactError(f"{path}: not a protomask {kind} (format {found!r})")
    if found_version is None or int(found_version) not in versions:
        f.close()
        known = " or ".join(str(v) for v in versions)
        raise ArtifactError(
            f"{path}: {kind} version {found_version} is not known to this "
            f"code (it reads version {known}); rerun {stage}"
        )
    return f


def _out_of_file_handles(exc: OSError) -> bool:
    """Whether opening failed for want of file handles (not for anything in the file)."""
    return exc.errno in (errno.EMFILE, errno.ENFILE) or "Too many open files" in str(exc)


def _open_file_limit() -> str:
    """This process's soft limit of open files, as ``ulimit -n`` shows it."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


@contextlib.contextmanager
def reading(path: Path, kind: str, stage: str, what: str) -> Iterator[None]:
    """Turn an HDF5 read failure (a chunk failing its checksum, a missing dataset) inside
    the block into one ArtifactError naming the file, ``what`` was read and the fix."""
    try:
        yield
    except (OSError, KeyError) as exc:
        reason = h5_reason(exc)
        if _is_checksum_failure(reason):
            reason = "a chunk fails its checksum"
        raise ArtifactError(
            f"{path}: damaged {kind}, cannot read {what} ({reason}); "
            f"rerun {stage} (dvc repro rebuilds it)"
        ) from None
