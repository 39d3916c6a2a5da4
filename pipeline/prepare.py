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

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
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
from pipeline.records import DatasetListing, ImageRecord, RecordTable
from pipeline.tables import SPLITS, TableWriter, write_table

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Decoded:
    """What prepare learns by decoding one image."""

    width: int
    height: int
    pixel_hash: str  # 32 hex characters (pipeline.imageio.pixel_hash)
    segmentation_problem: str | None = None  # why its segmentation PNG does not decode


@dataclass(frozen=True)
class DecodedTable:
    """What prepare learned by decoding, per listing row, as flat columns."""

    ok: np.ndarray  # bool: the image decoded
    width: np.ndarray  # int32
    height: np.ndarray  # int32
    digest: np.ndarray  # (rows, 16) uint8: the pixel hash's bytes
    segmentation_problems: dict[int, str]  # row -> why its segmentation PNG does not decode

    @classmethod
    def of(cls, decoded: Sequence[Decoded | None]) -> DecodedTable:
        """The table of one Decoded (or None: did not decode) per row."""
        table = cls.empty(len(decoded))
        for row, facts in enumerate(decoded):
            if facts is not None:
                table.set(row, facts)
        return table

    @classmethod
    def empty(cls, rows: int) -> DecodedTable:
        """A table of ``rows`` images none of which decoded yet."""
        return cls(
            np.zeros(rows, dtype=np.bool_),
            np.zeros(rows, dtype=np.int32),
            np.zeros(rows, dtype=np.int32),
            np.zeros((rows, 16), dtype=np.uint8),
            {},
        )

    def set(self, row: int, facts: Decoded) -> None:
        """Record the facts of the image in ``row``."""
        self.ok[row] = True
        self.width[row] = facts.width
        self.height[row] = facts.height
        self.digest[row] = np.frombuffer(bytes.fromhex(facts.pixel_hash), dtype=np.uint8)
        if facts.segmentation_problem is not None:
            self.segmentation_problems[row] = facts.segmentation_problem

    def pixel_hash(self, row: int) -> str:
        """The row's pixel hash as written in the images index."""
        return self.digest[row].tobytes().hex()


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
) -> tuple[DecodedTable, list[dict]]:
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

    decoded = DecodedTable.empty(len(listing.records))
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
        for row, result in track(enumerate(results), bar):
            if isinstance(result, str):
                record = listing.records[row]
                rejects.append({"image_id": record.image_id, "path": record.path, "reason": result})
            else:
                decoded.set(row, result)
    return decoded, rejects


TRAIN, VAL, TEST = range(3)  # split codes: indices into tables.SPLITS


def _split_name(is_train: bool) -> str:
    return "train" if is_train else "test"


def remove_duplicates(
    records: RecordTable, rows: np.ndarray, decoded: DecodedTable
) -> tuple[np.ndarray, list[dict]]:
    """Keep one of ``rows`` per distinct pixel content: a training copy when there is one.

    Same pixels under two names would leak between splits (or weigh one photo twice);
    returns the kept rows by image id and the removed copies as rows of the duplicates
    table.
    """
    rows = np.asarray(rows, dtype=np.int64)
    ids, train = records.image_ids()[rows], records.is_train()[rows]
    digest = decoded.digest[rows].view(">u8")  # two big-endian words: byte order kept
    order = np.lexsort((ids, ~train, digest[:, 1], digest[:, 0]))
    first = np.ones(len(order), dtype=np.bool_)
    first[1:] = np.any(np.diff(digest[order], axis=0) != 0, axis=1)
    group_keep = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    duplicates = []
    for position in np.flatnonzero(~first):
        other, keep = records[int(rows[order[position]])], records[int(rows[group_keep[position]])]
        duplicates.append(
            {
                "image_id": other.image_id,
                "path": other.path,
                "dataset_split": _split_name(other.is_train),
                "kept_image_id": keep.image_id,
                "kept_path": keep.path,
                "kept_split": _split_name(keep.is_train),
            }
        )
    kept = order[first]
    kept = rows[kept[np.argsort(ids[kept], kind="stable")]]
    duplicates.sort(key=lambda row: row["image_id"])
    return kept, duplicates


def assign_splits(
    image_ids: np.ndarray,
    class_ids: np.ndarray,
    is_train: np.ndarray,
    class_names: tuple[str, ...],
    val_fraction: float,
    seed: int,
) -> np.ndarray:
    """Split code (TRAIN | VAL | TEST) per image: val carved from train, stratified and
    seeded by image id, so independent of the images' order.

    Every class must keep at least one training image; test is the dataset's own.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    is_train = np.asarray(is_train, dtype=np.bool_)
    split = np.where(is_train, TRAIN, TEST).astype(np.uint8)
    per_class = np.bincount(class_ids[is_train], minlength=len(class_names))
    missing = [class_names[c] for c in range(len(class_names)) if not per_class[c]]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{len(missing)} class(es) have no training image after rejects "
            f"and duplicates were removed: {shown}"
        )
    train_rows = np.flatnonzero(is_train)
    train_rows = train_rows[np.lexsort((image_ids[train_rows], class_ids[train_rows]))]
    starts = np.searchsorted(class_ids[train_rows], np.arange(len(per_class) + 1))
    for class_id in np.flatnonzero(per_class):
        members = train_rows[starts[class_id] : starts[class_id + 1]]
        n_val = min(int(round(val_fraction * len(members))), len(members) - 1)
        rng = np.random.default_rng([seed, int(class_id)])
        split[members[rng.permutation(len(members))[:n_val]]] = VAL
    return split


def index_rows(
    records: Sequence[ImageRecord],
    kept: np.ndarray,
    class_names: tuple[str, ...],
    decoded: DecodedTable,
    split: np.ndarray,
) -> Iterator[dict]:
    """Rows of the images table (schema: pipeline.tables), one at a time, for the ``kept``
    rows of ``records`` with their split codes; a segmentation that does not decode is
    left out."""
    for row, code in zip(map(int, kept), map(int, split), strict=True):  # no list of all
        r = records[row]
        yield (
            {
                "image_id": r.image_id,
                "path": r.path,
                "class_id": r.class_id,
                "class_name": class_names[r.class_id],
                "split": SPLITS[code],
                "width": int(decoded.width[row]),
                "height": int(decoded.height[row]),
                "pixel_hash": decoded.pixel_hash(row),
                "object_box_xywh": list(r.object_box_xywh) if r.object_box_xywh else None,
                "parts": (
                    [
                        {"part_id": p.part_id, "x": p.x, "y": p.y, "visible": p.visible}
                        for p in r.parts
                    ]
                    if r.parts is not None
                    else None
                ),
                "segmentation_path": (
                    None if row in decoded.segmentation_problems else r.segmentation_path
                ),
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


def segmentation_rejects(records: RecordTable, decoded: DecodedTable) -> list[dict]:
    """The rejects rows of the segmentation PNGs that do not decode (their images are kept
    without one)."""
    rows = []
    for row in sorted(decoded.segmentation_problems):
        record = records[row]
        rows.append(
            {
                "image_id": record.image_id,
                "path": record.segmentation_path,
                "reason": f"segmentation mask: {decoded.segmentation_problems[row]}; the image "
                "is kept without object ground truth",
            }
        )
    return rows


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


def split_counts(split: np.ndarray) -> dict[str, int]:
    """Images per split name."""
    return {name: int(np.count_nonzero(split == code)) for code, name in enumerate(SPLITS)}


def check_splits(
    split: np.ndarray, kept_classes: np.ndarray, duplicates: list[dict], data: DataParams
) -> None:
    """Refuse an empty train, validation or test split, naming the key or file to change
    (``kept_classes``: the class id of each kept image, aligned with ``split``)."""
    counts = split_counts(split)
    if counts["val"] == 0:
        classes = len(np.unique(kept_classes[split != TEST]))
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


def check_train(kept_train: np.ndarray, source: str) -> None:
    """Refuse a dataset without any training image (before the per-class check)."""
    if kept_train.any():
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
    records = listing.records
    if not records:
        raise DatasetError(f"{root}: the dataset lists no images")
    check_classes(listing, root)
    decoded, rejects = decode_all(listing, root, data.decode_workers)
    seg_rejects = segmentation_rejects(records, decoded)
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
    reject_fraction = len(rejects) / len(records)
    if reject_fraction > data.max_reject_fraction:
        examples = "; ".join(f"{r['path']}: {r['reason']}" for r in rejects[:3])
        raise DatasetError(
            f"{len(rejects)} of {len(records)} images could not be decoded "
            f"({reject_fraction:.1%} > data.max_reject_fraction {data.max_reject_fraction:g}); "
            f"see {layout.REJECTS_TABLE} (e.g. {examples})"
        )
    kept, duplicates = remove_duplicates(records, np.flatnonzero(decoded.ok), decoded)
    kept_train, kept_classes = records.is_train()[kept], records.class_ids()[kept]
    check_train(kept_train, data.source)
    split = assign_splits(
        records.image_ids()[kept],
        kept_classes,
        kept_train,
        listing.class_names,
        data.val_fraction,
        data.seed,
    )
    check_splits(split, kept_classes, duplicates, data)
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
        index_rows(records, kept, listing.class_names, decoded, split),
        fingerprint=fp,
        facts=facts,
    )
    counts = split_counts(split)
    with_segmentation = records.has_segmentation()
    with_segmentation[list(decoded.segmentation_problems)] = False
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
        "with_segmentation": int(with_segmentation[kept].sum()),
        "with_parts": int(records.has_parts()[kept].sum()),
    }
    write_json(project_root / layout.PREPARE_METRICS, metrics)
    return metrics
