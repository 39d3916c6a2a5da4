"""The prepare stage's work: listing -> decoded, de-duplicated, split images index.

The rejects table lists, one row each, what prepare does not use as the reader found it:
- a listed image that does not decode (``path`` is the image; counted against
  ``data.max_reject_fraction``);
- an entry the reader did not list (a folder dataset's link leading out of its class
  folder; ``path`` is the link);
- a CUB segmentation PNG that does not decode (``path`` is the PNG, under
  ``segmentations/``): its image stays in the index without object ground truth
  (``segmentation_path`` null, as for an image without a PNG), so evaluate's object
  metrics skip it instead of reading a wrong mask, and no bad file stops prepare.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from pipeline import layout
from pipeline.atomic import write_json
from pipeline.datasets import read_dataset
from pipeline.errors import DatasetError, ImageDecodeError
from pipeline.imageio import load_rgb, pixel_hash, read_mask_png, resolve_inside
from pipeline.params import DataParams, result_fingerprint
from pipeline.progress import Progress, get_logger, track
from pipeline.records import DatasetListing, ImageRecord
from pipeline.tables import TableWriter, write_table

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Decoded:
    """What prepare learns by decoding one image."""

    width: int
    height: int
    pixel_hash: str
    segmentation_problem: str | None = None  # why its segmentation PNG does not decode


def index_fingerprint(data: DataParams) -> str:
    """Fingerprint of the parameters that decide the images index (not decode_workers)."""
    return result_fingerprint(data)


# Images submitted ahead of the one being collected, per decoding thread: enough to keep
# every thread busy, few enough that pending results never pile up.
IN_FLIGHT_PER_WORKER = 32


def bounded_map(
    pool: Executor, fn: Callable[[A], R], items: Iterable[A], window: int
) -> Iterator[R]:
    """``pool.map(fn, items)`` in order, with at most ``window`` calls submitted and not yet
    collected (``Executor.map`` submits every item at once: one future per image)."""
    pending: deque[Future[R]] = deque()
    for item in items:
        if len(pending) >= max(1, window):
            yield pending.popleft().result()
        pending.append(pool.submit(fn, item))
    while pending:
        yield pending.popleft().result()


def decode_all(
    listing: DatasetListing, root: Path, workers: int
) -> tuple[dict[int, Decoded], list[dict]]:
    """Decode every listed image and its segmentation PNG (if any); return what decoded
    and the images that did not, with reasons."""

    def decode(record: ImageRecord) -> Decoded | str:
        try:
            rgb = load_rgb(resolve_inside(root, record.path))
        except ImageDecodeError as exc:
            return exc.reason
        problem = None
        if record.segmentation_path:
            try:
                read_mask_png(resolve_inside(root, record.segmentation_path))
            except ImageDecodeError as exc:
                problem = exc.reason
        return Decoded(rgb.shape[1], rgb.shape[0], pixel_hash(rgb), problem)

    decoded: dict[int, Decoded] = {}
    rejects: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = bounded_map(pool, decode, listing.records, window=IN_FLIGHT_PER_WORKER * workers)
        bar = Progress(
            "prepare: decoding",
            len(listing.records),
            logger=get_logger("prepare"),
            every=0.25,
            leave=False,
        )
        for record, result in track(zip(listing.records, results, strict=False), bar):
            if isinstance(result, str):
                rejects.append({"image_id": record.image_id, "path": record.path, "reason": result})
            else:
                decoded[record.image_id] = result
    return decoded, rejects


def remove_duplicates(
    records: list[ImageRecord], decoded: dict[int, Decoded]
) -> tuple[list[ImageRecord], list[dict]]:
    """Keep one image per distinct pixel content: a training copy when there is one.

    Same pixels under two names would leak between splits (or weigh one photo twice);
    the removed copies are returned as rows of the duplicates table.
    """
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[decoded[record.image_id].pixel_hash].append(record)
    kept, duplicates = [], []
    for group in groups.values():
        keep = min(group, key=lambda r: (not r.is_train, r.image_id))
        kept.append(keep)
        for other in group:
            if other is keep:
                continue
            duplicates.append(
                {
                    "image_id": other.image_id,
                    "path": other.path,
                    "dataset_split": "train" if other.is_train else "test",
                    "kept_image_id": keep.image_id,
                    "kept_path": keep.path,
                    "kept_split": "train" if keep.is_train else "test",
                }
            )
    kept.sort(key=lambda r: r.image_id)
    duplicates.sort(key=lambda row: row["image_id"])
    return kept, duplicates


def assign_splits(
    records: list[ImageRecord], class_names: tuple[str, ...], val_fraction: float, seed: int
) -> dict[int, str]:
    """train | val | test per image id: val carved from train, stratified and seeded.

    Every class must keep at least one training image; test is the dataset's own.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    split: dict[int, str] = {}
    for record in records:
        if record.is_train:
            by_class[record.class_id].append(record.image_id)
            split[record.image_id] = "train"
        else:
            split[record.image_id] = "test"
    missing = [class_names[c] for c in range(len(class_names)) if not by_class.get(c)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{len(missing)} class(es) have no training image after rejects "
            f"and duplicates were removed: {shown}"
        )
    for class_id, ids in sorted(by_class.items()):
        ids = sorted(ids)
        n_val = min(int(round(val_fraction * len(ids))), len(ids) - 1)
        rng = np.random.default_rng([seed, class_id])
        for image_id in rng.permutation(np.asarray(ids, dtype=np.int64))[:n_val]:
            split[int(image_id)] = "val"
    return split


def index_rows(
    records: list[ImageRecord],
    listing: DatasetListing,
    decoded: dict[int, Decoded],
    split: dict[int, str],
) -> Iterator[dict]:
    """Rows of the images table (schema: pipeline.tables), one at a time."""
    for r in records:
        d = decoded[r.image_id]
        yield (
            {
                "image_id": r.image_id,
                "path": r.path,
                "class_id": r.class_id,
                "class_name": listing.class_names[r.class_id],
                "split": split[r.image_id],
                "width": d.width,
                "height": d.height,
                "pixel_hash": d.pixel_hash,
                "object_box_xywh": list(r.object_box_xywh) if r.object_box_xywh else None,
                "parts": (
                    [
                        {"part_id": p.part_id, "x": p.x, "y": p.y, "visible": p.visible}
                        for p in r.parts
                    ]
                    if r.parts is not None
                    else None
                ),
                "segmentation_path": r.segmentation_path,
            }
        )


# Rows of the images index turned into Arrow at a time (their dicts are ~10 KB each with
# parts; the Arrow rows a few hundred bytes).
ROWS_PER_BATCH = 8192


def write_images_index(path: Path, rows: Iterable[dict], *, fingerprint: str, facts: dict) -> None:
    """Write the images index from ``rows`` in batches of ROWS_PER_BATCH dicts (the bytes
    of one write of them all)."""
    with TableWriter(path, "images", fingerprint=fingerprint, facts=facts) as writer:
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == ROWS_PER_BATCH:
                writer.write_rows(batch)
                batch = []
        writer.write_rows(batch)


def segmentation_rejects(
    records: list[ImageRecord], decoded: dict[int, Decoded]
) -> tuple[list[ImageRecord], list[dict]]:
    """Drop the segmentation of each image whose PNG does not decode; the rejects rows."""
    kept, rows = [], []
    for record in records:
        problem = decoded[record.image_id].segmentation_problem
        if problem is None:
            kept.append(record)
            continue
        rows.append(
            {
                "image_id": record.image_id,
                "path": record.segmentation_path,
                "reason": f"segmentation mask: {problem}; the image is kept without "
                "object ground truth",
            }
        )
        kept.append(replace(record, segmentation_path=None))
    return kept, rows


# Where each source's classes and official split come from (named in split errors).
CLASS_LISTING = {
    "folder": "one folder per class: <root>/<class>/<image>",
    "cub": "classes.txt must list at least 2 classes",
    "synthetic": "classes.txt must list at least 2 classes",
    "stanford_dogs": "Images/ must hold at least 2 <wnid>-<name> class folders",
    "stanford_cars": "the annotations must use at least 2 classes",
}
SPLIT_LISTING = {
    "cub": (
        "train_test_split.txt marks no kept image as test (0): mark some as test",
        "train_test_split.txt marks no kept image as training (1): mark the training images with 1",
    ),
    "stanford_dogs": (
        "lists/test_list.mat lists no kept image: use the official lists",
        "lists/train_list.mat lists no kept image: use the official lists",
    ),
    "stanford_cars": (
        "no kept image is a test image (cars_annos.mat's test flag, or "
        "cars_test_annos_withlabels.mat): use the official annotations",
        "no kept image is a training image (cars_annos.mat's test flag, or "
        "devkit/cars_train_annos.mat): use the official annotations",
    ),
}
SPLIT_LISTING["synthetic"] = SPLIT_LISTING["cub"]


def check_classes(listing: DatasetListing, root: Path) -> None:
    """A classifier needs two classes: refuse a dataset with fewer, naming what was found."""
    names = listing.class_names
    if len(names) >= 2:
        return
    how = CLASS_LISTING.get(listing.source, CLASS_LISTING["cub"])
    found = f"1 class ('{names[0]}')" if names else "no class"
    raise DatasetError(f"{root}: found {found}; prepare needs at least 2 classes ({how})")


def check_splits(
    split: dict[int, str], kept: list[ImageRecord], duplicates: list[dict], data: DataParams
) -> None:
    """Refuse an empty train, validation or test split, naming the key or file to change."""
    counts = {s: sum(1 for v in split.values() if v == s) for s in ("train", "val", "test")}
    if counts["val"] == 0:
        classes = len({r.class_id for r in kept if r.is_train})
        raise DatasetError(
            f"data.val_fraction {data.val_fraction:g} leaves the validation split empty "
            f"({counts['train']} training images in {classes} classes; each class moves "
            f"round({data.val_fraction:g} x its training images) to validation and keeps one "
            "for training): raise data.val_fraction (below 0.5) or add training images"
        )
    if counts["test"] == 0:
        lost = sum(1 for d in duplicates if d["dataset_split"] == "test")
        why = (
            f"data.test_fraction {data.test_fraction:g} of each class rounds to 0 images "
            "(a class keeps at least one for training): raise data.test_fraction or add "
            "images"
            if data.source == "folder"
            else SPLIT_LISTING.get(data.source, SPLIT_LISTING["cub"])[0]
        )
        dups = f"; {lost} test images were duplicates of training images" if lost else ""
        raise DatasetError(f"the test split is empty: {why}{dups}")


def check_train(kept: list[ImageRecord], source: str) -> None:
    """Refuse a dataset without any training image (before the per-class check)."""
    if any(r.is_train for r in kept):
        return
    if source == "folder":
        raise DatasetError(
            f"the train split is empty: every training image was rejected or a "
            f"duplicate; see {layout.REJECTS_TABLE} and "
            f"{layout.DUPLICATES_TABLE}"
        )
    raise DatasetError(
        "the train split is empty: " + SPLIT_LISTING.get(source, SPLIT_LISTING["cub"])[1]
    )


def run_prepare(data: DataParams, project_root: Path = Path(".")) -> dict:
    """Build the images index, rejects and duplicates tables and the prepare metrics."""
    root = project_root / data.root
    listing = read_dataset(data.source, root, test_fraction=data.test_fraction, seed=data.seed)
    if not listing.records:
        raise DatasetError(f"{root}: the dataset lists no images")
    check_classes(listing, root)
    decoded, rejects = decode_all(listing, root, data.decode_workers)
    readable = [r for r in listing.records if r.image_id in decoded]
    readable, seg_rejects = segmentation_rejects(readable, decoded)
    link_rejects = [
        {"image_id": e.image_id, "path": e.path, "reason": e.reason} for e in listing.rejected
    ]
    fp = index_fingerprint(data)
    write_table(
        sorted(
            rejects + link_rejects + seg_rejects, key=lambda row: (row["image_id"], row["path"])
        ),
        project_root / layout.REJECTS_TABLE,
        "rejects",
        fingerprint=fp,
    )
    reject_fraction = len(rejects) / len(listing.records)
    if reject_fraction > data.max_reject_fraction:
        examples = "; ".join(f"{r['path']}: {r['reason']}" for r in rejects[:3])
        raise DatasetError(
            f"{len(rejects)} of {len(listing.records)} images could not be decoded "
            f"({reject_fraction:.1%} > data.max_reject_fraction {data.max_reject_fraction:g}); "
            f"see {layout.REJECTS_TABLE} (e.g. {examples})"
        )
    kept, duplicates = remove_duplicates(readable, decoded)
    check_train(kept, data.source)
    split = assign_splits(kept, listing.class_names, data.val_fraction, data.seed)
    check_splits(split, kept, duplicates, data)
    facts = {
        "source": data.source,
        "data_root": data.root,
        "class_names": list(listing.class_names),
        "part_names": list(listing.part_names) if listing.part_names else None,
        "notes": list(listing.notes),
    }
    write_table(duplicates, project_root / layout.DUPLICATES_TABLE, "duplicates", fingerprint=fp)
    write_images_index(
        project_root / layout.IMAGES_INDEX,
        index_rows(kept, listing, decoded, split),
        fingerprint=fp,
        facts=facts,
    )
    counts = {s: sum(1 for v in split.values() if v == s) for s in ("train", "val", "test")}
    metrics = {
        "images": len(kept),
        "classes": len(listing.class_names),
        "train": counts["train"],
        "val": counts["val"],
        "test": counts["test"],
        "rejects": len(rejects),
        "duplicates_removed": len(duplicates),
        "links_rejected": len(link_rejects),
        "segmentations_rejected": len(seg_rejects),
        "with_segmentation": sum(1 for r in kept if r.segmentation_path),
        "with_parts": sum(1 for r in kept if r.parts is not None),
    }
    write_json(project_root / layout.PREPARE_METRICS, metrics)
    return metrics
