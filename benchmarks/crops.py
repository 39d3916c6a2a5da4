"""Speed and storage of the crops stage against the naive way, and of the view loader.

1. Crops/s: our stage code (pipeline.crops.crop_shard, one process, every mask shard)
   against the naive way the reference takes: for every crop decode the image again with
   PIL, crop, resize, write one PNG. Same images, same boxes, one run. Prints the ratio
   (target >= 5x) and the bytes per image of both (ours includes the whole image that
   each crop shard also stores for the baseline).
2. Views/s: ViewDataset through a DataLoader with 2 workers against the same normalised
   tensors held in memory, batched by a DataLoader in the main process (target: within
   2x); slicing one big tensor is printed too, as an upper bound.
3. Reuse check: run_crops on the finished project, where every crop shard is kept after a
   full read (Fletcher-32 per chunk, the content digest): its seconds, of which the
   verification, against the seconds our stage code took to write the shards.

4. Codecs (param crops.codec), side by side on the same views: the synthetic project's
   crops and views cut from real photos (scikit-image's sample photographs, random boxes
   resized as the crops stage resizes): stored bytes per view, encode (write) and read
   (HDF5 read + decode, by CropShard as the loader reads) CPU time per view, each as a
   ratio to gzip-1 (the format before codecs), and the mean absolute pixel error.
   Times are process CPU seconds (min over --repeats passes): on a shared CPU, wall
   time measures the neighbours.

Run by hand (a throwaway synthetic project is built in a temporary folder):

    python benchmarks/crops.py [--classes 8] [--images-per-class 8] [--image-size 320]
                               [--size 224] [--views 8] [--codecs gzip blosc-zstd ...]
                               [--stage-codecs gzip blosc-zstd] [--codecs-only]

Parts 1-3 run for each of --stage-codecs; part 4 for each of --codecs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from pipeline import layout
from pipeline.crop_codecs import CODECS, NBYTES_SUFFIX
from pipeline.crop_shards import VIEW_COLUMNS, CropShard, crop_shard_paths, write_crop_shard
from pipeline.crops import crop_shard, plan_tasks, run_crops
from pipeline.params import CropsParams, DataParams, Params, SegmentParams, SyntheticParams
from pipeline.prepare import run_prepare
from pipeline.segment import run_segment
from pipeline.synthetic import generate_synthetic
from pipeline.tables import read_table
from pipeline.view_datasets import ViewDataset
from pipeline.views import resize_square

REAL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina")


def build_project(root: Path, args: argparse.Namespace) -> Params:
    """Synthesize, prepare and segment a small project; return its params."""
    synthetic = SyntheticParams(
        num_classes=args.classes, images_per_class=args.images_per_class, image_size=args.image_size
    )
    params = replace(
        Params(),
        data=replace(DataParams(), synthetic=synthetic),
        segment=SegmentParams(workers=2, shard_size=16),
        crops=CropsParams(num_views=args.views, size=args.size),
    )
    generate_synthetic(root / layout.SYNTHETIC_ROOT, synthetic)
    run_prepare(params.data, root)
    run_segment(params, root)
    return params


def ours(params: Params, root: Path) -> tuple[float, int, int]:
    """Seconds, crops written and bytes of our stage code, serially in this process."""
    out = root / layout.CROPS_DIR
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(params, root, out)
    start = time.perf_counter()
    crops = sum(crop_shard(task).crops for task in tasks)
    seconds = time.perf_counter() - start
    return seconds, crops, sum(p.stat().st_size for p in crop_shard_paths(out))


def reuse_seconds(params: Params, root: Path) -> tuple[float, float]:
    """Seconds of run_crops when every shard is reused, and of its verification read."""
    start = time.perf_counter()
    result = run_crops(params, root)
    seconds = time.perf_counter() - start
    if result["shards_reused"] != result["shards"]:
        raise RuntimeError(f"expected every shard reused, got {result}")
    return seconds, result["verify_seconds"]


def naive(params: Params, root: Path, out: Path) -> tuple[float, int, int]:
    """The reference's way for the same distinct views: decode per crop, crop, resize, PNG."""
    views, _ = read_table(root / layout.CROPS_INDEX, "crops")
    images, _ = read_table(root / layout.IMAGES_INDEX, "images")
    path_of = dict(zip(images["image_id"].to_pylist(), images["path"].to_pylist(), strict=False))
    distinct = views.filter(views["duplicate_of"].to_numpy() < 0).to_pylist()
    out.mkdir(parents=True, exist_ok=True)
    size = params.crops.size
    start = time.perf_counter()
    for view in distinct:
        with Image.open(root / params.data.root / path_of[view["image_id"]]) as image:
            x0, y0, x1, y1 = view["box"]
            crop = image.convert("RGB").crop((x0, y0, x1 + 1, y1 + 1))
            crop.resize((size, size), Image.BILINEAR).save(
                out / f"{view['image_id']}_{view['view']}.png"
            )
    seconds = time.perf_counter() - start
    return seconds, len(distinct), sum(p.stat().st_size for p in out.iterdir())


def loader_rate(crops_dir: Path, batch_size: int, epochs: int) -> float:
    """Views/s of ViewDataset (train split) through a DataLoader with 2 workers."""
    dataset = ViewDataset(crops_dir, "train")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=2, persistent_workers=True)
    for _ in loader:  # warm-up epoch: worker start, file opening
        pass
    start, views = time.perf_counter(), 0
    for _ in range(epochs):
        for batch, _, _ in loader:
            views += batch.shape[0] * batch.shape[1]
    return views / (time.perf_counter() - start)


def memory_rates(crops_dir: Path, batch_size: int, epochs: int) -> tuple[float, float]:
    """Views/s of the same normalised views held in memory: through a DataLoader in the
    main process (indexing + collation), and by slicing one tensor (an upper bound)."""
    dataset = ViewDataset(crops_dir, "train")
    items = [dataset[k] for k in range(len(dataset))]
    held = TensorDataset(
        torch.stack([views for views, _, _ in items]),
        torch.tensor([label for _, label, _ in items]),
        torch.tensor([image_id for _, _, image_id in items]),
    )
    rates = []
    for batches in (
        lambda: DataLoader(held, batch_size=batch_size),
        lambda: (
            held.tensors[0][lo : lo + batch_size].clone() for lo in range(0, len(held), batch_size)
        ),
    ):
        start, views = time.perf_counter(), 0
        for _ in range(epochs):
            for batch in batches():
                batch = batch[0] if isinstance(batch, list) else batch
                views += batch.shape[0] * batch.shape[1]
        rates.append(views / (time.perf_counter() - start))
    return rates[0], rates[1]


def real_views(size: int, per_photo: int, seed: int = 0) -> np.ndarray:
    """Views of real photos: random boxes (1/8 to all of each side) of scikit-image's
    sample photographs, resized to ``size`` as the crops stage resizes a crop."""
    from skimage import data

    rng = np.random.default_rng(seed)
    views = []
    for name in REAL_PHOTOS:
        photo = np.ascontiguousarray(getattr(data, name)()[..., :3])
        height, width = photo.shape[:2]
        for _ in range(per_photo):
            w, h = rng.integers(width // 8, width + 1), rng.integers(height // 8, height + 1)
            x, y = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            views.append(resize_square(photo[y : y + h, x : x + w], size))
    return np.stack(views)


def stored_crops(crops_dir: Path) -> np.ndarray:
    """Every distinct view stored in a crops folder's shards, as (n, S, S, 3) uint8."""
    parts = []
    for path in crop_shard_paths(crops_dir):
        with CropShard(path) as shard:
            parts.append(shard.crops[:])
    return np.concatenate(parts)


def write_views(path: Path, views: np.ndarray, codec: str) -> float:
    """Store ``views`` as the crops of one crop shard; the CPU seconds it took."""
    n = len(views)
    table = {name: np.zeros((n,) + tail, dtype) for name, (dtype, tail) in VIEW_COLUMNS.items()}
    start = time.process_time()
    write_crop_shard(
        path,
        views,
        views[:1],
        table,
        fingerprint="benchmark",
        size=views.shape[1],
        fill="zero",
        num_views=1,
        mask_shard="shard-00000.h5",
        codec=codec,
    )
    return time.process_time() - start


def read_views(path: Path, block: int, repeats: int) -> tuple[float, np.ndarray]:
    """CPU seconds to read every view back, ``block`` rows per read (an image's views),
    min over ``repeats`` passes, and the views read."""
    best, views = float("inf"), None
    for _ in range(repeats):
        with CropShard(path) as shard:
            start = time.process_time()
            parts = [
                shard.rows(np.arange(lo, min(lo + block, len(shard.crops))))
                for lo in range(0, len(shard.crops), block)
            ]
            best = min(best, time.process_time() - start)
        views = np.concatenate(parts)
    return best, views


def stored_bytes(path: Path) -> int:
    """Bytes the crops take in the file (their datasets' storage)."""
    with h5py.File(path, "r") as f:
        names = [n for n in ("crops", "crops" + NBYTES_SUFFIX) if n in f]
        return sum(f[n].id.get_storage_size() for n in names)


def codec_table(
    name: str, views: np.ndarray, codecs: list[str], block: int, repeats: int, tmp: Path
) -> None:
    """Print bytes, encode and read CPU time per view of each codec, vs gzip-1."""
    n = len(views)
    print(
        f"{name}: {n} views of {views.shape[1]} px ({views[0].nbytes} B raw); per view, CPU time:"
    )
    print(
        f"  {'codec':14s} {'lossless':>8s} {'bytes':>9s} {'vs gzip':>8s} {'read us':>9s} {'vs gzip':>8s} {'write us':>9s} {'mean |err|':>10s}"
    )
    rows = {}
    for codec in ["gzip"] + [c for c in codecs if c != "gzip"]:
        path = tmp / f"codec-{codec}.h5"
        written = write_views(path, views, codec)
        read, back = read_views(path, block, repeats)
        error = float(np.abs(back.astype(np.int16) - views).mean())
        rows[codec] = (stored_bytes(path) / n, read / n, written / n, error)
    base_bytes, base_read = rows["gzip"][0], rows["gzip"][1]
    for codec, (size, read, written, error) in rows.items():
        print(
            f"  {codec:14s} {'yes' if CODECS[codec].lossless else 'NO':>8s} {size:9.0f} "
            f"{base_bytes / size:7.2f}x {1e6 * read:9.0f} {base_read / read:7.2f}x "
            f"{1e6 * written:9.0f} {error:10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--images-per-class", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    parser.add_argument(
        "--stage-codecs", nargs="+", default=["gzip", "blosc-zstd"], choices=list(CODECS)
    )
    parser.add_argument("--real-per-photo", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--codecs-only", action="store_true", help="only part 4")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = build_project(root, args)
        run_crops(params, root)  # the index, for the naive run's boxes
        for name, views in (
            ("synthetic crops", stored_crops(root / layout.CROPS_DIR)),
            ("real photo views", real_views(args.size, args.real_per_photo)),
        ):
            codec_table(name, views, args.codecs, args.views, args.repeats, root)
        if args.codecs_only:
            return
        n_images = len(read_table(root / layout.IMAGES_INDEX, "images")[0])
        kib = 1024 * n_images
        t_naive, c_naive, b_naive = naive(params, root, root / "naive")
        memory, sliced = memory_rates(root / layout.CROPS_DIR, args.batch_size, args.epochs)
        print(
            f"{n_images} images of {args.image_size}px, {args.views} views of {args.size}px, "
            f"{c_naive} distinct crops"
        )
        print(
            f"naive: {c_naive / t_naive:8.1f} crops/s  {b_naive / kib:8.1f} KiB/image "
            f"(one PNG per crop)"
        )
        print(
            f"views/s from memory: through a DataLoader {memory:8.0f}; slicing one tensor "
            f"{sliced:8.0f}"
        )
        print("ours (crops + the whole image per shard), DataLoader with 2 workers:")
        for codec in args.stage_codecs:
            run = replace(params, crops=replace(params.crops, codec=codec))
            t_ours, c_ours, b_ours = ours(run, root)  # rewrites the shards; same index
            loaded = loader_rate(root / layout.CROPS_DIR, args.batch_size, args.epochs)
            t_reuse, t_verify = reuse_seconds(run, root)
            print(
                f"  {codec:10s}: {c_ours / t_ours:8.1f} crops/s "
                f"(speed-up {t_naive / t_ours * c_ours / c_naive:.1f}x, target >= 5x)  "
                f"{b_ours / kib:8.1f} KiB/image  loader {loaded:8.0f} views/s "
                f"(memory/shards = {memory / loaded:.2f}, target <= 2)  rerun with every "
                f"shard reused {t_reuse:.2f} s, of which the verification read "
                f"{t_verify:.2f} s ({1000 * t_verify / n_images:.1f} ms/image; writing "
                f"took {t_ours:.2f} s)"
            )


if __name__ == "__main__":
    main()
