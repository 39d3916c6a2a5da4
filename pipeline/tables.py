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

PART_TYPE = pa.struct([
    pa.field("part_id", pa.int16(), nullable=False),
    pa.field("x", pa.float32(), nullable=False),
    pa.field("y", pa.float32(), nullable=False),
    pa.field("visible", pa.bool_(), nullable=False),
])

SCHEMAS: dict[str, tuple[int, pa.Schema]] = {
    # One row per kept image (SPEC section 4).
    "images": (1, pa.schema([
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),            # relative to the data root
        pa.field("class_id", pa.int32(), nullable=False),         # 0-based
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),           # train | val | test
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("pixel_hash", pa.string(), nullable=False),
        pa.field("object_box_xywh", pa.list_(pa.float32(), 4)),   # ground truth, may be null
        pa.field("parts", pa.list_(PART_TYPE)),                   # ground truth, may be null
        pa.field("segmentation_path", pa.string()),               # ground truth, may be null
    ])),
    # One row per listed image that could not be decoded.
    "rejects": (1, pa.schema([
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ])),
    # One row per image removed because another listed image has the same pixels.
    "duplicates": (1, pa.schema([
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("dataset_split", pa.string(), nullable=False),   # train | test, as listed
        pa.field("kept_image_id", pa.int64(), nullable=False),
        pa.field("kept_path", pa.string(), nullable=False),
        pa.field("kept_split", pa.string(), nullable=False),
    ])),
}

SPLITS = ("train", "val", "test")


def schema_of(kind: str) -> pa.Schema:
    """The Arrow schema of an artifact kind."""
    return SCHEMAS[kind][1]


def write_table(rows: list[dict[str, Any]], path: Path, kind: str, *, fingerprint: str,
                facts: dict[str, Any] | None = None) -> None:
    """Write ``rows`` as a ``kind`` table atomically, with version, fingerprint and facts."""
    version, schema = SCHEMAS[kind]
    table = pa.Table.from_pylist(rows, schema=schema)
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
        raise ArtifactError(f"{path}: missing; run the stage that writes it "
                            f"(dvc repro) first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable Parquet file ({exc})") from None
    meta = table.schema.metadata or {}
    found_kind = meta.get(b"protomask.kind", b"").decode()
    if found_kind != kind:
        raise ArtifactError(f"{path}: expected a protomask '{kind}' table, "
                            f"found {found_kind or 'no protomask metadata'}")
    version, schema = SCHEMAS[kind]
    found_version = meta.get(b"protomask.version", b"").decode()
    if found_version != str(version):
        raise ArtifactError(f"{path}: '{kind}' format version {found_version} is not known "
                            f"to this code (it reads version {version}); rerun the stage")
    info = {
        "fingerprint": meta.get(b"protomask.fingerprint", b"").decode(),
        "facts": json.loads(meta.get(b"protomask.facts", b"{}")),
    }
    return table.select(schema.names).cast(schema), info
