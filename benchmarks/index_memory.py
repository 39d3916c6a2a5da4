"""Peak memory of the whole-table steps against the way they were done before (issue 15,
item 2), side by side in one run on synthetic tables.

Each step runs in a fresh process; it prints the step's peak RSS above the process's RSS
just before it (Linux: the high-water mark is reset through /proc/self/clear_refs), for
the naive way (the code before: whole table read, Python objects per row, every future
submitted at once, the crops index assembled whole) and ours, and their ratio:

1. dataset: a torch Dataset's crops index for the train split (ViewDataset), and the
   bytes it pickles to each DataLoader worker;
2. crops index: the crops index written from the crop shards' per-view tables;
3. prepare listing: a reader's listing of the images (15 part keypoints each) held as a
   tuple of ImageRecord with a PartLocation per keypoint (before) or as a RecordTable;
4. prepare decode: decoding every listed image through the thread pool;
5. prepare index: the images index (15 part keypoints per image) written from its rows;
6. evaluate: the test set's ground truth and view boxes (load_test_set).

Run by hand:

    python benchmarks/index_memory.py [--rows 100000] [--views 8] [--shard-size 32]

``--rows``: rows of the crops index (rows / views images, in crop shards of shard-size)
and of the images index.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import layout  # noqa: E402
from pipeline.crop_shards import CropShard, write_crop_shard  # noqa: E402
from pipeline.crops import index_facts, write_index  # noqa: E402
from pipeline.params import CropsParams  # noqa: E402
from pipeline.records import (  # noqa: E402
    DatasetListing,
    ImageRecord,
    PartLocation,
    RecordTable,
)
from pipeline.tables import SCHEMAS, write_table  # noqa: E402

SPLITS = np.array([b"train", b"val", b"test"])
PARTS = 15


# ------------------------------------------------------------------ peak RSS of one step
def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(step) -> tuple[float, object]:
    """Run ``step()``; its peak RSS above the RSS before it (bytes) and its result."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    result = step()
    return _status("VmHWM") - before, result


# ------------------------------------------------------------------ synthetic inputs
def build(root: Path, rows: int, views: int, shard_size: int) -> None:
    """Crop shards (tiny crops) and their crops index, an images index of ``rows`` images
    with parts, tiny PNGs for the decode step."""
    crops_dir = root / layout.CROPS_DIR
    crops_dir.mkdir(parents=True)
    n_images = rows // views
    rng = np.random.default_rng(0)
    tasks = []
    pixel = np.zeros((1, 2, 2, 3), np.uint8)
    for index, start in enumerate(range(0, n_images, shard_size)):
        ids = np.arange(start, min(start + shard_size, n_images), dtype=np.int64)
        n = len(ids)
        m = n * views
        split = SPLITS[np.searchsorted([0.7, 0.8], (ids % 10) / 10, side="right")]
        columns = {
            "image_id": np.repeat(ids, views),
            "view": np.tile(np.arange(views, dtype=np.int16), n),
            "mask_index": rng.integers(-1, 50, m).astype(np.int32),
            "duplicate_of": np.full(m, -1, np.int16),
            "box": rng.integers(0, 500, (m, 4)).astype(np.int32),
            "area": rng.integers(1, 10**5, m),
            "predicted_iou": rng.random(m, np.float32),
            "stability_score": rng.random(m, np.float32),
            "class_id": np.repeat((ids % 200).astype(np.int32), views),
            "split": np.repeat(split, views),
            "row": np.zeros(m, np.int32),
            "image_row": np.repeat(np.arange(n, dtype=np.int32), views),
            "fallback": np.zeros(m, np.uint8),
        }
        path = crops_dir / f"crops-{index:05d}.h5"
        write_crop_shard(
            path,
            pixel,
            np.repeat(pixel, n, axis=0),
            columns,
            fingerprint="bench",
            size=2,
            fill="zero",
            num_views=views,
            mask_shard=f"shard-{index:05d}.h5",
            codec="none",
        )
        tasks.append(SimpleNamespace(index=index, out_path=str(path)))
    facts = index_facts(CropsParams(num_views=views, size=2))
    write_index(
        tasks,
        crops_dir,
        root / layout.CROPS_INDEX,
        fingerprint="bench",
        facts=facts,
        num_views=views,
    )
    write_table(
        [image_row(i) for i in range(rows)],
        root / layout.IMAGES_INDEX,
        "images",
        fingerprint="bench",
        facts={"class_names": [f"c{i}" for i in range(200)], "part_names": None},
    )
    images = root / "images"
    images.mkdir()
    for k in range(64):
        cv2.imwrite(str(images / f"{k}.png"), np.full((8, 8, 3), k, np.uint8))


def image_row(i: int) -> dict:
    """A row of the images index like CUB's (15 part keypoints)."""
    return {
        "image_id": i,
        "path": f"images/{i % 200:03d}.Class_name_{i % 200}/Image_name_{i:07d}.jpg",
        "class_id": i % 200,
        "class_name": f"{i % 200:03d}.Class_name_{i % 200}",
        "split": ("train", "val", "test")[int(np.searchsorted([7, 8], i % 10, side="right"))],
        "width": 500,
        "height": 375,
        "pixel_hash": f"{i:064x}",
        "object_box_xywh": [1.0, 2.0, 300.0, 200.0],
        "parts": [
            {"part_id": q + 1, "x": 10.0 * q, "y": 5.0 * q, "visible": q % 3 != 0}
            for q in range(PARTS)
        ],
        "segmentation_path": f"segmentations/{i:07d}.png",
    }


def listed_images(rows: int) -> Iterator[ImageRecord]:
    """Records as a CUB reader lists them: own path, box and keypoints per image."""
    for i in range(rows):
        yield ImageRecord(
            i + 1,
            f"images/{i % 64}.png",
            i % 200,
            i % 10 < 8,
            (i % 7 + 0.5, 2.0, 300.0, 200.0),
            tuple(PartLocation(q + 1, i + 10.0 * q, 5.5 * q, q % 3 != 0) for q in range(PARTS)),
            f"segmentations/{i % 64}.png",
        )


def listing(rows: int) -> DatasetListing:
    return DatasetListing(
        records=RecordTable(listed_images(rows)),
        class_names=tuple(f"c{i}" for i in range(200)),
        source="cub",
    )


def listing_naive(rows: int):
    """A tuple of per-image record objects, a PartLocation per keypoint (readers before)."""
    return len(tuple(listed_images(rows)))


def listing_ours(rows: int):
    return len(RecordTable(listed_images(rows)))


# ------------------------------------------------------------------ the steps, both ways
def dataset_naive(root: Path):
    """ViewDataset's index before: every column of every split, a string per image."""
    table = pq.read_table(root / layout.CROPS_INDEX)
    table = table.filter(pc.equal(table["split"], "train")).sort_by(
        [("image_id", "ascending"), ("view", "ascending")]
    )
    first = table.filter(pc.equal(table["view"], 0))
    shard_names = first["shard"].to_numpy(zero_copy_only=False).astype(str)
    names, of = np.unique(shard_names, return_inverse=True)
    state = {
        "image_ids": first["image_id"].to_numpy(),
        "labels": first["class_id"].to_numpy(),
        "image_rows": first["image_row"].to_numpy(),
        "shard_names": names,
        "shard_of": of,
        "rows": table["row"].to_numpy().reshape(len(first), -1),
    }
    return len(pickle.dumps(state))


def dataset_ours(root: Path):
    from pipeline.view_datasets import ViewDataset

    return len(pickle.dumps(ViewDataset(root / layout.CROPS_DIR, "train")))


def crops_index_naive(root: Path):
    """The crops index before: every shard's views concatenated, sorted, written whole."""
    parts = defaultdict(list)
    for path in sorted((root / layout.CROPS_DIR).glob("crops-*.h5")):
        with CropShard(path) as shard:
            views = shard.views()
        for name, values in views.items():
            parts[name].append(values)
        parts["shard"].append(np.full(len(views["image_id"]), path.name))
    columns = {name: np.concatenate(values) for name, values in parts.items()}
    order = np.lexsort((columns["view"], columns["image_id"]))
    columns = {name: values[order] for name, values in columns.items()}
    fallback = columns["fallback"].astype(bool)
    arrays = {
        name: pa.array(columns[name])
        for name in ("image_id", "view", "mask_index", "duplicate_of", "area", "class_id")
        + ("row", "image_row")
    }
    arrays["box"] = pa.FixedSizeListArray.from_arrays(pa.array(columns["box"].reshape(-1)), 4)
    for name in ("predicted_iou", "stability_score"):
        arrays[name] = pa.array(columns[name], mask=fallback)
    arrays["split"] = pa.array(np.char.decode(columns["split"], "ascii").tolist(), pa.string())
    arrays["shard"] = pa.array(columns["shard"].tolist(), pa.string())
    arrays["fallback"] = pa.array(fallback)
    schema = SCHEMAS["crops"][1]
    table = pa.Table.from_arrays([arrays[n] for n in schema.names], schema=schema)
    pq.write_table(table, root / "naive-crops.parquet", compression="zstd")
    return (root / "naive-crops.parquet").stat().st_size


def crops_index_ours(root: Path):
    crops_dir = root / layout.CROPS_DIR
    tasks = [
        SimpleNamespace(index=k, out_path=str(p))
        for k, p in enumerate(sorted(crops_dir.glob("crops-*.h5")))
    ]
    facts = json.loads(pq.read_schema(root / layout.CROPS_INDEX).metadata[b"protomask.facts"])
    write_index(
        tasks,
        crops_dir,
        root / "ours-crops.parquet",
        fingerprint="x",
        facts={},
        num_views=facts["num_views"],
    )
    return (root / "ours-crops.parquet").stat().st_size


def decode_naive(root: Path, records: DatasetListing):
    """Every image submitted to the pool at once (Executor.map), as before."""
    from pipeline import prepare

    window = prepare.bounded_map
    prepare.bounded_map = lambda pool, fn, items, window: pool.map(fn, items)
    try:
        return int(prepare.decode_all(records, root, 2)[0].ok.sum())
    finally:
        prepare.bounded_map = window


def decode_ours(root: Path, records: DatasetListing):
    from pipeline.prepare import decode_all

    return int(decode_all(records, root, 2)[0].ok.sum())


def images_index_naive(root: Path, rows: int):
    rows_ = [image_row(i) for i in range(rows)]  # every row dict, then one table
    write_table(rows_, root / "naive-images.parquet", "images", fingerprint="x")
    return (root / "naive-images.parquet").stat().st_size


def images_index_ours(root: Path, rows: int):
    from pipeline.prepare import write_images_index

    path = root / "ours-images.parquet"
    write_images_index(path, (image_row(i) for i in range(rows)), fingerprint="x", facts={})
    return path.stat().st_size


def evaluate_naive(root: Path):
    """load_test_set before: the whole images table as dicts, the whole crops table."""
    crops = pq.read_table(root / layout.CROPS_INDEX)
    ids = np.unique(crops.filter(pc.equal(crops["split"], "test"))["image_id"].to_numpy())
    images = pq.read_table(root / layout.IMAGES_INDEX)
    rows = {r["image_id"]: r for r in images.to_pylist()}
    crops = crops.filter(pc.is_in(crops["image_id"], pa.array(ids))).sort_by(
        [("image_id", "ascending"), ("view", "ascending")]
    )
    picked = [rows[int(i)] for i in ids]
    boxes = np.asarray(crops["box"].to_pylist(), np.int64)
    return len(picked) + len(boxes)


def evaluate_ours(root: Path):
    from pipeline.evaluation_set import load_test_set
    from pipeline.tables import read_table

    crops, _ = read_table(
        root / layout.CROPS_INDEX, "crops", columns=["image_id"], filters=[("split", "==", "test")]
    )
    ids = np.unique(crops["image_id"].to_numpy())
    test = load_test_set(root, ids)
    return len(test.image_ids) + test.boxes.shape[0] * test.boxes.shape[1]


STEPS = {
    "dataset (train split)": (dataset_naive, dataset_ours),
    "crops index": (crops_index_naive, crops_index_ours),
    "prepare listing": (listing_naive, listing_ours),
    "prepare decode": (decode_naive, decode_ours),
    "prepare images index": (images_index_naive, images_index_ours),
    "evaluate test set": (evaluate_naive, evaluate_ours),
}


def warm_up(root: Path) -> None:
    """Import every module and run Parquet and HDF5 once on a tiny table before measuring,
    so one-time costs (torch, codecs, thread pools) count for neither way."""
    import pipeline.evaluation_set  # noqa: F401
    import pipeline.prepare  # noqa: F401
    import pipeline.view_datasets  # noqa: F401

    path = root / f"warm-{time.monotonic_ns()}.parquet"
    write_table([image_row(0)], path, "images", fingerprint="x")
    pq.read_table(path, filters=[("split", "==", "train")])
    path.unlink()
    with CropShard(next((root / layout.CROPS_DIR).glob("crops-*.h5"))) as shard:
        shard.views()


def run_one(root: Path, step: str, way: int, rows: int) -> None:
    fn = STEPS[step][way]
    args: tuple = (root,)
    if step == "prepare decode":
        args = (root, listing(rows))  # the reader's listing exists before decoding
    elif step == "prepare images index":
        args = (root, rows)
    elif step == "prepare listing":
        args = (rows,)
    warm_up(root)
    start = time.perf_counter()
    peak, result = measure(lambda: fn(*args))
    print(json.dumps({"peak": peak, "result": result, "seconds": time.perf_counter() - start}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # root, step, way
    args = parser.parse_args()
    if args.one:
        run_one(Path(args.one[0]), args.one[1], int(args.one[2]), args.rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        build(root, args.rows, args.views, args.shard_size)
        print(
            f"{args.rows} rows ({args.rows // args.views} images x {args.views} views in "
            f"{-(-args.rows // args.views // args.shard_size)} crop shards; images index "
            f"{args.rows} rows) built in {time.perf_counter() - start:.0f} s"
        )
        print("| step | naive peak MiB | ours peak MiB | naive / ours | naive s | ours s |")
        print("|---|---|---|---|---|---|")
        for step in STEPS:
            out = []
            for way in (0, 1):
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--rows",
                        str(args.rows),
                        "--one",
                        tmp,
                        step,
                        str(way),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                out.append(json.loads(done.stdout.strip().splitlines()[-1]))
            naive, ours = out
            extra = ""
            if step.startswith("dataset"):
                extra = f" (pickled to each worker: {naive['result'] / 2**20:.1f} vs {ours['result'] / 2**20:.1f} MiB)"
            print(
                f"| {step}{extra} | {naive['peak'] / 2**20:.1f} | {ours['peak'] / 2**20:.1f} | "
                f"{naive['peak'] / max(ours['peak'], 1):.1f}x | {naive['seconds']:.2f} | "
                f"{ours['seconds']:.2f} |"
            )


if __name__ == "__main__":
    main()
