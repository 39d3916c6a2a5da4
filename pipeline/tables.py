"""Parquet artifact schemas (the one place they are defined) and their versioned I/O.

Every table carries, in its Parquet key-value metadata, its kind, the format version,
the fingerprint of the parameters that made it, and kind-specific facts (JSON).
Readers refuse a kind or version they do not know, naming the file.
"""

from __future__ import annotations

import json
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


def write_table(
    rows: list[dict[str, Any]],
    path: Path,
    kind: str,
    *,
    fingerprint: str,
    facts: dict[str, Any] | None = None,
) -> None:
    """Write ``rows`` as a ``kind`` table atomically, with version, fingerprint and facts."""
    _write(
        pa.Table.from_pylist(rows, schema=SCHEMAS[kind][1]),
        path,
        kind,
        fingerprint=fingerprint,
        facts=facts,
    )


def write_columns(
    columns: dict[str, pa.Array],
    path: Path,
    kind: str,
    *,
    fingerprint: str,
    facts: dict[str, Any] | None = None,
) -> None:
    """Write Arrow columns (one per schema field, any order) as a ``kind`` table."""
    schema = SCHEMAS[kind][1]
    missing = set(schema.names) - set(columns)
    if missing:
        raise ValueError(f"'{kind}' columns missing: {sorted(missing)}")
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    _write(table, path, kind, fingerprint=fingerprint, facts=facts)


def _write(
    table: pa.Table, path: Path, kind: str, *, fingerprint: str, facts: dict[str, Any] | None
) -> None:
    version = SCHEMAS[kind][0]
    metadata = {
        b"protomask.kind": kind.encode(),
        b"protomask.version": str(version).encode(),
        b"protomask.fingerprint": fingerprint.encode(),
        b"protomask.facts": json.dumps(facts or {}, sort_keys=True).encode(),
    }
    table = table.replace_schema_metadata(metadata)
    with atomic_file(Path(path)) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: Path, kind: str) -> tuple[pa.Table, dict[str, Any]]:
    """Read a ``kind`` table; return it with its metadata (fingerprint, facts)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing; run the stage that writes it (dvc repro) first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable Parquet file ({exc})") from None
    meta = table.schema.metadata or {}
    found_kind = meta.get(b"protomask.kind", b"").decode()
    if found_kind != kind:
        raise ArtifactError(
            f"{path}: expected a protomask '{kind}' table, "
            f"found {found_kind or 'no protomask metadata'}"
        )
    version, schema = SCHEMAS[kind]
    found_version = meta.get(b"protomask.version", b"").decode()
    if found_version != str(version):
        raise ArtifactError(
            f"{path}: '{kind}' format version {found_version} is not known "
            f"to this code (it reads version {version}); rerun the stage"
        )
    info = {
        "fingerprint": meta.get(b"protomask.fingerprint", b"").decode(),
        "facts": json.loads(meta.get(b"protomask.facts", b"{}")),
    }
    return table.select(schema.names).cast(schema), info
