"""Whole-table memory (issue 15, item 2): tables are streamed in row groups with the bytes
of one write, the crops index is written shard by shard, prepare keeps a bounded number
of decodes in flight, readers take only their rows and columns."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import layout, prepare
from pipeline.crop_shards import write_crop_shard
from pipeline.crops import assemble_index, crops_metrics, index_arrays, write_index
from pipeline.errors import ArtifactError
from pipeline.tables import (
    SCHEMAS,
    TableWriter,
    read_info,
    read_table,
    rows_per_group,
    write_table,
)

VIEWS = 3
FACTS = {"num_views": VIEWS, "size": 2, "fill": "zero", "order": "area", "min_box_size": 0}


def shard_columns(ids: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The per-view table of a crop shard holding ``ids`` (fallbacks, repeats, splits)."""
    rng = np.random.default_rng(seed)
    n, m = len(ids), len(ids) * VIEWS
    fallback = np.repeat(ids % 4 == 0, VIEWS)
    return {
        "image_id": np.repeat(ids, VIEWS),
        "view": np.tile(np.arange(VIEWS, dtype=np.int16), n),
        "mask_index": np.where(fallback, -1, rng.integers(0, 9, m)).astype(np.int32),
        "duplicate_of": np.where(rng.random(m) < 0.2, 0, -1).astype(np.int16),
        "box": rng.integers(0, 60, (m, 4)).astype(np.int32),
        "area": rng.integers(1, 3600, m),
        "predicted_iou": np.where(fallback, np.nan, rng.random(m)).astype(np.float32),
        "stability_score": np.where(fallback, np.nan, rng.random(m)).astype(np.float32),
        "class_id": np.repeat(ids % 3, VIEWS).astype(np.int32),
        "split": np.repeat(np.array([b"train", b"val", b"test"])[ids % 3], VIEWS),
        "row": rng.integers(0, n, m).astype(np.int32),
        "image_row": np.repeat(np.arange(n, dtype=np.int32), VIEWS),
        "fallback": fallback.astype(np.uint8),
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, list[SimpleNamespace]]:
    """Five tiny crop shards of consecutive image ids (each stored in view-major order,
    as a shard may be) and their tasks."""
    crops_dir = tmp_path_factory.mktemp("scale") / "artifacts" / "crops"
    crops_dir.mkdir(parents=True)
    pixel = np.zeros((1, 2, 2, 3), np.uint8)
    tasks = []
    for k, ids in enumerate(np.array_split(np.arange(1, 24, dtype=np.int64), 5)):
        columns = shard_columns(ids, k)
        order = np.lexsort((columns["image_id"], columns["view"]))  # not index order
        path = crops_dir / f"crops-{k:05d}.h5"
        write_crop_shard(
            path,
            pixel,
            np.repeat(pixel, len(ids), axis=0),
            {name: values[order] for name, values in columns.items()},
            fingerprint="f",
            size=2,
            fill="zero",
            num_views=VIEWS,
            mask_shard=f"shard-{k:05d}.h5",
            codec="none",
        )
        tasks.append(SimpleNamespace(index=k, out_path=str(path)))
    return crops_dir, tasks


def whole_write(table: pa.Table, path: Path, kind: str, facts: dict, rows: int) -> bytes:
    """The bytes of one pq.write_table of the whole table (what was written before)."""
    meta = {
        b"protomask.kind": kind.encode(),
        b"protomask.version": b"1",
        b"protomask.fingerprint": b"fp",
        b"protomask.facts": __import__("json").dumps(facts, sort_keys=True).encode(),
    }
    pq.write_table(
        table.replace_schema_metadata(meta), path, compression="zstd", row_group_size=rows
    )
    return path.read_bytes()


@pytest.mark.parametrize("row_group_rows", [4, 9, 69, 1000])
def test_crops_index_streamed_shard_by_shard_has_the_bytes_of_one_write(
    shards, tmp_path: Path, row_group_rows: int
) -> None:
    crops_dir, tasks = shards
    columns = assemble_index(tasks, crops_dir)
    schema = SCHEMAS["crops"][1]
    arrays = index_arrays(columns)
    table = pa.Table.from_arrays([arrays[n] for n in schema.names], schema=schema)
    expected = whole_write(table, tmp_path / "whole.parquet", "crops", FACTS, row_group_rows)

    out = tmp_path / "crops.parquet"
    metrics = write_index(
        list(reversed(tasks)),
        crops_dir,
        out,
        fingerprint="fp",
        facts=FACTS,
        num_views=VIEWS,
        row_group_rows=row_group_rows,
    )
    assert out.read_bytes() == expected
    assert pq.ParquetFile(out).num_row_groups == -(-len(table) // row_group_rows)
    assert metrics == crops_metrics(columns, VIEWS)
    assert not list(tmp_path.glob(".*tmp*"))


def test_crops_index_of_shards_out_of_order_is_sorted_whole(shards, tmp_path: Path) -> None:
    crops_dir, tasks = shards
    swapped = [SimpleNamespace(index=t.index, out_path=tasks[-1 - t.index].out_path) for t in tasks]
    kwargs = {"fingerprint": "fp", "facts": FACTS, "num_views": VIEWS, "row_group_rows": 9}
    write_index(tasks, crops_dir, tmp_path / "a.parquet", **kwargs)
    write_index(swapped, crops_dir, tmp_path / "b.parquet", **kwargs)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_table_writer_pieces_and_empty_table(tmp_path: Path) -> None:
    rows = [
        {
            "image_id": i,
            "path": f"p/{i}.png",
            "reason": "x" * (i % 5),
        }
        for i in range(50)
    ]
    write_table(rows, tmp_path / "whole.parquet", "rejects", fingerprint="fp")
    with TableWriter(tmp_path / "pieces.parquet", "rejects", fingerprint="fp") as writer:
        for start, stop in ((0, 1), (1, 1), (1, 17), (17, 50)):
            writer.write_rows(rows[start:stop])
    assert (tmp_path / "pieces.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()

    empty = tmp_path / "empty.parquet"
    write_table([], empty, "rejects", fingerprint="fp")
    table = pa.Table.from_pylist([], schema=SCHEMAS["rejects"][1])
    assert empty.read_bytes() == whole_write(table, tmp_path / "e.parquet", "rejects", {}, 1)

    with (
        pytest.raises(RuntimeError),
        TableWriter(tmp_path / "failed.parquet", "rejects", fingerprint="fp") as w,
    ):
        w.write_rows(rows)
        raise RuntimeError("stop")
    assert not (tmp_path / "failed.parquet").exists() and not list(tmp_path.glob(".*tmp*"))


def image_row(i: int) -> dict:
    """An images index row (every field; some nulls, parts of 0-3 keypoints)."""
    return {
        "image_id": i,
        "path": f"images/{i}.jpg",
        "class_id": i % 2,
        "class_name": f"c{i % 2}",
        "split": "train",
        "width": 10,
        "height": 8,
        "pixel_hash": f"{i:064x}",
        "object_box_xywh": [1.0, 2.0, 3.0, 4.0] if i % 3 else None,
        "parts": [{"part_id": 1, "x": 1.5, "y": 2.0, "visible": True}] * (i % 4) if i % 5 else None,
        "segmentation_path": None,
    }


def test_images_index_in_batches_has_the_bytes_of_one_write(tmp_path: Path, monkeypatch) -> None:
    facts = {"class_names": ["a", "b"]}
    write_table(
        [image_row(i) for i in range(40)],
        tmp_path / "a.parquet",
        "images",
        fingerprint="fp",
        facts=facts,
    )
    monkeypatch.setattr(prepare, "ROWS_PER_BATCH", 7)
    prepare.write_images_index(
        tmp_path / "b.parquet", (image_row(i) for i in range(40)), fingerprint="fp", facts=facts
    )
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_a_long_table_is_written_a_bounded_row_group_at_a_time(tmp_path: Path) -> None:
    """The writer never holds more than one row group of the kind's size (images: 8,192
    rows), so writing memory does not grow with the table."""
    n = rows_per_group("images") * 2 + 100
    most = 0
    with TableWriter(tmp_path / "images.parquet", "images", fingerprint="fp") as writer:
        for start in range(0, n, 1000):
            writer.write_rows([image_row(i) for i in range(start, min(start + 1000, n))])
            most = max(most, writer._buffered)
    assert most < rows_per_group("images")
    groups = pq.ParquetFile(tmp_path / "images.parquet").metadata
    assert [groups.row_group(g).num_rows for g in range(groups.num_row_groups)] == [
        8192,
        8192,
        100,
    ]
    assert rows_per_group("crops") * 60 < 16 * 2**20  # a crops row group: a few MiB


def test_bounded_map_keeps_order_and_at_most_window_in_flight() -> None:
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.001)
        with lock:
            state["now"] -= 1
        return i * i

    submitted = []

    def items():
        for i in range(60):
            submitted.append(i)
            yield i

    with ThreadPoolExecutor(max_workers=4) as pool:
        out = []
        for k, value in enumerate(prepare.bounded_map(pool, work, items(), window=5)):
            out.append(value)
            assert len(submitted) <= k + 1 + 5  # never more than the window ahead
    assert out == [i * i for i in range(60)]
    assert state["most"] <= 4


def test_read_table_only_the_rows_and_columns_asked(shards, tmp_path: Path) -> None:
    crops_dir, tasks = shards
    path = crops_dir / layout.CROPS_INDEX.name
    write_index(tasks, crops_dir, path, fingerprint="fp", facts=FACTS, num_views=VIEWS)
    table, info = read_table(
        path, "crops", columns=["view", "image_id"], filters=[("split", "==", "val")]
    )
    assert table.column_names == ["view", "image_id"]
    assert set(table["image_id"].to_numpy() % 3) == {1}
    assert info == read_info(path, "crops") and info["facts"] == FACTS
    with pytest.raises(ArtifactError, match="expected a protomask 'images' table"):
        read_info(path, "images")


def test_view_dataset_keeps_its_split_as_compact_arrays(shards) -> None:
    from pipeline.view_datasets import ViewDataset

    crops_dir, tasks = shards
    path = crops_dir / layout.CROPS_INDEX.name
    write_index(tasks, crops_dir, path, fingerprint="fp", facts=FACTS, num_views=VIEWS)
    columns = assemble_index(tasks, crops_dir)
    for split in ("train", "val", "test"):
        ds = ViewDataset(crops_dir, split)
        keep = np.char.decode(columns["split"], "ascii") == split
        ids = columns["image_id"][keep][::VIEWS]
        np.testing.assert_array_equal(ds.image_ids, ids)
        np.testing.assert_array_equal(ds.rows, columns["row"][keep].reshape(-1, VIEWS))
        np.testing.assert_array_equal(ds.labels, columns["class_id"][keep][::VIEWS])
        shard = columns["shard"][keep][::VIEWS]
        np.testing.assert_array_equal(ds.shard_names[ds.shard_of], shard)
        assert list(ds.shard_names) == sorted(set(shard))
        assert ds.shard_of.dtype == np.int32 and not any(
            a.dtype == object for a in (ds.image_ids, ds.labels, ds.rows, ds.image_rows)
        )
