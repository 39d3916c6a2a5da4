"""Fault injection for tests: flip bytes inside a zip record or an HDF5 chunk, truncate,
kill, a small file-size limit (a full disk), without side effects on the test process."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def record_offset(path: Path, suffix: str) -> int:
    """File offset of the data of the zip record whose name ends with ``suffix``."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len)


def flip(path: Path, offset: int, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def prototypes_record(path: Path) -> str:
    """The zip record holding head.prototypes (the storage key torch gave it)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as archive:
        pkl = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pkl)]
    for i, (_, arg) in enumerate(ops):
        if arg == "head.prototypes":
            key = next(
                a
                for name, a in ops[i:]
                if name in ("BINUNICODE", "SHORT_BINUNICODE") and isinstance(a, str) and a.isdigit()
            )
            return f"data/{key}"
    raise AssertionError("head.prototypes not found")


def flip_in_chunk(path: Path, dataset: str, chunk: int = 0, at: int = 10) -> None:
    """Flip one byte inside chunk ``chunk`` of an HDF5 dataset, as disk damage would."""
    import h5py

    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    offset = info.byte_offset + min(at, info.size - 1)
    flip(path, offset, 1)


def file_size_limit(limit: int):
    """A preexec_fn: files of the child may grow to ``limit`` bytes, then writes fail with
    EFBIG (a full disk, as the process sees it) instead of killing it with SIGXFSZ."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
