"""Parquet artifact schemas (the one place they are defined) and their versioned I/O.

Every table carries, in its Parquet key-value metadata, its kind, the format version,
the fingerprint of the parameters that made it, and kind-specific facts (JSON).
Readers refuse a kind or version they do not know, naming the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_file
from pipeline.errors import ArtifactError

PART_TYPE = pa.struct(
    [
        pa.field("part_id", pa.int16(), nullable=False),
        pa.field("x", pa.float32(), nullable=False),
        pa.field("y", pa.float32(), nullable=False),
        pa.field("visible", pa.bool_(), nullable=False),
    ]
)

SCHEMAS: dict[str, tuple[int, pa.Schema]] = {
    # One row per kept image.
    "images": (
        1,
        pa.schema(
            [
                pa.field("image_id", pa.int64(), nullable=False),
                pa.field("path", pa.string(), nullable=False),  # relative to the data root
                pa.field("class_id", pa.int32(), nullable=False),  # 0-based
                pa.field("class_name", pa.string(), nullable=False),
                pa.field("split", pa.string(), nullable=False),  # train | val | test
                pa.field("width", pa.int32(), nullable=False),
                pa.field("height", pa.int32(), nullable=False),
                pa.field("pixel_hash", pa.string(), nullable=False),
                pa.field("object_box_xywh", pa.list_(pa.float32(), 4)),  # ground truth, may be null
                pa.field("parts", pa.list_(PART_TYPE)),  # ground truth, may be null
                pa.field("segmentation_path", pa.string()),  # ground truth, may be null
            ]
        ),
    ),
    # One row per listed image that could not be decoded, per link that would have given an
    # image another folder's label (class folders), and per segmentation PNG that does not
    # decode (its image is kept without object ground truth).
    "rejects": (
        1,
        pa.schema(
            [
                pa.field("image_id", pa.int64(), nullable=False),
                pa.field("path", pa.string(), nullable=False),
                pa.field("reason", pa.string(), nullable=False),
            ]
        ),
    ),
    # One row per image removed because another listed image has the same pixels.
    "duplicates": (
        1,
        pa.schema(
            [
                pa.field("image_id", pa.int64(), nullable=False),
                pa.field("path", pa.string(), nullable=False),
                pa.field("dataset_split", pa.string(), nullable=False),  # train | test, as listed
                pa.field("kept_image_id", pa.int64(), nullable=False),
                pa.field("kept_path", pa.string(), nullable=False),
                pa.field("kept_split", pa.string(), nullable=False),
            ]
        ),
    ),
    # One row per view of every image: M rows per image (pipeline/crops.py). Its facts
    # (num_views, size, fill, order, min_box_size: crops.index_facts) are where readers
    # find M and S; the crop shards' num_views attribute is never read.
    "crops": (
        1,
        pa.schema(
            [
                pa.field("image_id", pa.int64(), nullable=False),
                pa.field("view", pa.int16(), nullable=False),  # 0..M-1
                pa.field("mask_index", pa.int32(), nullable=False),  # mask row in its image;
                # -1: the whole image
                pa.field(
                    "duplicate_of", pa.int16(), nullable=False
                ),  # the view this repeats; -1: none
                pa.field(
                    "box", pa.list_(pa.int32(), 4), nullable=False
                ),  # inclusive x0, y0, x1, y1
                pa.field("area", pa.int64(), nullable=False),  # mask px (image px if fallback)
                pa.field("predicted_iou", pa.float32()),  # null for a fallback view
                pa.field("stability_score", pa.float32()),  # null for a fallback view
                pa.field("class_id", pa.int32(), nullable=False),
                pa.field("split", pa.string(), nullable=False),  # train | val | test
                pa.field("shard", pa.string(), nullable=False),  # crop shard file name
                pa.field("row", pa.int32(), nullable=False),  # row in the shard's crops (a
                # duplicate: its original's row)
                pa.field("image_row", pa.int32(), nullable=False),  # row in the shard's full images
                pa.field("fallback", pa.bool_(), nullable=False),  # the image had no usable mask
            ]
        ),
    ),
}

SPLITS = ("train", "val", "test")


# Rows per Parquet row group, per kind. TableWriter holds one row group (and its joined
# copy while writing it), so this bounds a table's writing memory whatever its length: a
# few MiB each. An images row is about 1 KiB in Arrow (its parts), a crops row about 60 B;
# fewer, larger groups keep a big table's footer (an entry per group and column) small.
ROW_GROUP_ROWS: dict[str, int] = {"images": 8192, "crops": 131072}
DEFAULT_ROW_GROUP_ROWS = 65536  # the other kinds: rejects, duplicates, failures


def rows_per_group(kind: str) -> int:
    """Rows per Parquet row group of a ``kind`` table."""
    return ROW_GROUP_ROWS.get(kind, DEFAULT_ROW_GROUP_ROWS)


def write_table(
    rows: list[dict[str, Any]],
    path: Path,
    kind: str,
    *,
    fingerprint: str,
    facts: dict[str, Any] | None = None,
) -> None:
    """Write ``rows`` as a ``kind`` table atomically, with version, fingerprint and facts."""
    with TableWriter(path, kind, fingerprint=fingerprint, facts=facts) as writer:
        writer.write_rows(rows)


def write_columns(
    columns: dict[str, pa.Array],
    path: Path,
    kind: str,
    *,
    fingerprint: str,
    facts: dict[str, Any] | None = None,
) -> None:
    """Write Arrow columns (one per schema field, any order) as a ``kind`` table."""
    with TableWriter(path, kind, fingerprint=fingerprint, facts=facts) as writer:
        writer.write_columns(columns)


def _metadata(kind: str, fingerprint: str, facts: dict[str, Any] | None) -> dict[bytes, bytes]:
    return {
        b"protomask.kind": kind.encode(),
        b"protomask.version": str(SCHEMAS[kind][0]).encode(),
        b"protomask.fingerprint": fingerprint.encode(),
        b"protomask.facts": json.dumps(facts or {}, sort_keys=True).encode(),
    }


class TableWriter:
    """Write a ``kind`` table piece by piece, atomically, holding at most one row group.

    Pieces (row dicts, Arrow columns or tables of the kind's schema, in table order) are
    buffered until a whole row group of ``row_group_rows`` rows (default: the kind's
    :func:`rows_per_group`) is there, which is then written as one contiguous chunk: the
    file has the same bytes as ``pq.write_table`` of the whole table at once with that row
    group size (same row groups, same pages), whatever the pieces were. The
    file appears under ``path`` only when the ``with`` block ends without an error.
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        *,
        fingerprint: str,
        facts: dict[str, Any] | None = None,
        row_group_rows: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.schema = SCHEMAS[kind][1].with_metadata(_metadata(kind, fingerprint, facts))
        self.row_group_rows = int(row_group_rows or rows_per_group(kind))
        self.rows_written = 0
        self._pieces: list[pa.Table] = []
        self._buffered = 0
        self._atomic: Any = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> TableWriter:
        self._atomic = atomic_file(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd")
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append rows given as dicts (one per row, every schema field)."""
        self.write(pa.Table.from_pylist(rows, schema=self.schema))

    def write_columns(self, columns: dict[str, pa.Array]) -> None:
        """Append rows given as Arrow columns (one per schema field, any order)."""
        missing = set(self.schema.names) - set(columns)
        if missing:
            raise ValueError(f"'{self.kind}' columns missing: {sorted(missing)}")
        self.write(
            pa.Table.from_arrays([columns[name] for name in self.schema.names], schema=self.schema)
        )

    def write(self, table: pa.Table) -> None:
        """Append an Arrow table of the kind's schema."""
        if table.num_rows == 0:
            return
        self._pieces.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.row_group_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        assert self._writer is not None
        if not self._pieces:
            if final and self.rows_written == 0:  # an empty table, as pq.write_table writes it
                self._writer.write_table(self.schema.empty_table())
            return
        table = pa.concat_tables(self._pieces).combine_chunks()
        self._pieces, self._buffered = [], 0
        rows = table.num_rows
        full = rows if final else rows - rows % self.row_group_rows
        if full:
            self._writer.write_table(table.slice(0, full), row_group_size=self.row_group_rows)
            self.rows_written += full
        if full < rows:
            self._pieces, self._buffered = [table.slice(full)], rows - full

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._writer is not None and self._atomic is not None
        try:
            if exc_type is None:
                self._flush(final=True)
        except BaseException:
            self._writer.close()
            self._atomic.__exit__(*sys.exc_info())
            raise
        self._writer.close()
        self._atomic.__exit__(exc_type, exc, tb)


def read_info(path: Path, kind: str) -> dict[str, Any]:
    """A ``kind`` table's metadata (fingerprint, facts), read from its footer only."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing; run the stage that writes it (dvc repro) first")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable Parquet file ({exc})") from None
    meta = schema.metadata or {}
    found_kind = meta.get(b"protomask.kind", b"").decode()
    if found_kind != kind:
        raise ArtifactError(
            f"{path}: expected a protomask '{kind}' table, "
            f"found {found_kind or 'no protomask metadata'}"
        )
    version = SCHEMAS[kind][0]
    found_version = meta.get(b"protomask.version", b"").decode()
    if found_version != str(version):
        raise ArtifactError(
            f"{path}: '{kind}' format version {found_version} is not known "
            f"to this code (it reads version {version}); rerun the stage"
        )
    return {
        "fingerprint": meta.get(b"protomask.fingerprint", b"").decode(),
        "facts": json.loads(meta.get(b"protomask.facts", b"{}")),
    }


def read_table(
    path: Path,
    kind: str,
    *,
    columns: Sequence[str] | None = None,
    filters: Any = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Read a ``kind`` table; return it with its metadata (fingerprint, facts).

    ``columns`` reads only those columns (in that order); ``filters`` (as for
    ``pyarrow.parquet.read_table``: a list of ``(column, op, value)`` or an expression)
    keeps only the rows that pass, filtered batch by batch as they are decoded, so
    neither the other columns nor the other rows are held whole.
    """
    info = read_info(path, kind)
    schema = SCHEMAS[kind][1]
    names = list(schema.names if columns is None else columns)
    unknown = [name for name in names if name not in schema.names]
    if unknown:
        raise ValueError(f"'{kind}' has no column(s) {unknown}")
    try:
        table = pq.read_table(path, columns=names, filters=filters)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable Parquet file ({exc})") from None
    wanted = pa.schema([schema.field(name) for name in names])
    return table.select(names).cast(wanted), info
