"""The crops stage's work: images index + mask shards -> crop shards + crops index.

One task per mask shard, run through dask like segment. Each crop shard carries a
fingerprint of the crops params, the crop shard format version, the images index
fingerprint, its mask shard's fingerprint and its images' index rows (path, class, split,
pixel hash). A rerun keeps every crop shard whose fingerprint matches and that reads back
intact (a full, checksummed read; a damaged one is named and rebuilt), and redoes the rest;
the crops index is then assembled from the per-view tables stored in the shards, so a
resumed run ends with the same bytes as an uninterrupted one.

metrics/crops.json holds only what the inputs and params decide; wall-clock facts
(seconds, images/s, shards reused) go to the run log logs/crops.json.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import layout
from pipeline.atomic import write_json
from pipeline.crop_shards import (
    VERSION,
    CropShard,
    check_crop_shard,
    crop_shard_paths,
    write_crop_shard,
)
from pipeline.devices import worker_count
from pipeline.errors import ArtifactError, ImageDecodeError
from pipeline.execution import degenerate_warning, percent
from pipeline.imageio import load_rgb, resolve_inside
from pipeline.mask_shards import (
    MaskShard,
    crop_shard_name,
    mask_shard_index,
    mask_shard_name,
    shard_paths,
)
from pipeline.params import CropsParams, Params, result_dict, text_fingerprint
from pipeline.progress import ShardReporter
from pipeline.segmenters.base import MaskSet
from pipeline.sharded import ShardedStage, run_shards
from pipeline.tables import TableWriter, read_table
from pipeline.views import ViewPlan, boxes_and_areas, cut_planned_views, plan_views, resize_square


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """What the crops of one image need from the images index."""

    image_id: int
    path: str
    class_id: int
    split: str


@dataclass(frozen=True)
class CropTask:
    """One unit of work: a mask shard's images, where to write, what fingerprint to stamp."""

    index: int
    mask_path: str
    out_path: str
    data_root: str
    images: tuple[ImageEntry, ...]
    fingerprint: str
    params: CropsParams

    @property
    def num_images(self) -> int:
        """Images of the mask shard."""
        return len(self.images)


@dataclass(frozen=True)
class CropSummary:
    """What a finished crop shard holds."""

    index: int
    images: int
    crops: int
    fallbacks: int = 0  # images whose every view is the whole image


@dataclass(frozen=True)
class ImageViews:
    """One image's views: the plan, its distinct crops and the per-view mask records."""

    plan: ViewPlan
    crops: np.ndarray  # (distinct, S, S, 3) uint8
    area: np.ndarray  # (M,) int64
    predicted_iou: np.ndarray  # (M,) float32, NaN for the whole-image fallback
    stability_score: np.ndarray  # (M,) float32, NaN for the whole-image fallback


def views_of_image(image: np.ndarray, masks: MaskSet, params: CropsParams) -> ImageViews:
    """Plan and cut the M views of one image from its masks (pure; no I/O)."""
    height, width = image.shape[:2]
    boxes, areas = boxes_and_areas(height, width, masks.rles)
    scores = {
        "area": areas,
        "predicted_iou": masks.predicted_iou,
        "stability_score": masks.stability_score,
    }[params.order]
    plan = plan_views(
        boxes,
        areas,
        scores,
        width=width,
        height=height,
        num_views=params.num_views,
        min_box_size=params.min_box_size,
    )
    k = plan.distinct
    crops = cut_planned_views(
        image, plan.boxes[:k], plan.mask_index[:k], masks.rles, params.size, params.fill
    )
    if plan.fallback:
        nan = np.full(params.num_views, np.nan, np.float32)
        return ImageViews(
            plan, crops, np.full(params.num_views, height * width, np.int64), nan, nan.copy()
        )
    idx = plan.mask_index
    return ImageViews(
        plan,
        crops,
        areas[idx],
        np.asarray(masks.predicted_iou, np.float32)[idx],
        np.asarray(masks.stability_score, np.float32)[idx],
    )


def view_rows(
    entry: ImageEntry, views: ImageViews, first_row: int, image_row: int
) -> dict[str, np.ndarray]:
    """The per-view columns (crop_shards.VIEW_COLUMNS) of one image whose distinct crops
    start at ``first_row``; a repeated view points at its original's row."""
    plan = views.plan
    m = len(plan.mask_index)
    own = np.where(plan.duplicate_of < 0, np.arange(m), plan.duplicate_of)
    return {
        "image_id": np.full(m, entry.image_id, np.int64),
        "view": np.arange(m, dtype=np.int16),
        "mask_index": plan.mask_index,
        "duplicate_of": plan.duplicate_of,
        "box": plan.boxes,
        "area": views.area,
        "predicted_iou": views.predicted_iou,
        "stability_score": views.stability_score,
        "class_id": np.full(m, entry.class_id, np.int32),
        "split": np.full(m, entry.split.encode(), "S5"),
        "row": (first_row + own).astype(np.int32),
        "image_row": np.full(m, image_row, np.int32),
        "fallback": np.full(m, plan.fallback, np.uint8),
    }


def load_image(root: Path, entry: ImageEntry) -> np.ndarray:
    """Decode one image of the index; a failure now means the data changed since prepare."""
    try:
        return load_rgb(resolve_inside(root, entry.path))
    except ImageDecodeError as exc:
        raise ArtifactError(
            f"{exc}; it decoded when prepare ran: the data changed, rerun prepare"
        ) from None


def crop_shard(task: CropTask) -> CropSummary:
    """Cut the views of one mask shard's images and write its crop shard (a dask task)."""
    root = Path(task.data_root)
    crops: list[np.ndarray] = []
    full: list[np.ndarray] = []
    columns: dict[str, list[np.ndarray]] = defaultdict(list)
    next_row = fallbacks = 0
    report = ShardReporter(task.out_path)
    with MaskShard(Path(task.mask_path)) as shard:
        for image_row, entry in enumerate(task.images):
            image = load_image(root, entry)
            masks = shard.masks(entry.image_id)
            if (
                shard.status(entry.image_id) == "ok"
                and (masks.height, masks.width) != image.shape[:2]
            ):
                raise ArtifactError(
                    f"{task.mask_path}: image {entry.image_id} is {image.shape[1]}x"
                    f"{image.shape[0]} but its masks are {masks.width}x{masks.height}; "
                    f"the masks are stale, rerun segment"
                )
            views = views_of_image(image, masks, task.params)
            for name, values in view_rows(entry, views, next_row, image_row).items():
                columns[name].append(values)
            crops.append(views.crops)
            full.append(resize_square(image, task.params.size))
            next_row += len(views.crops)
            fallbacks += int(views.plan.fallback)
            report.send({"images": image_row + 1, "views": next_row, "fallbacks": fallbacks})
    write_crop_shard(
        Path(task.out_path),
        np.concatenate(crops),
        np.stack(full),
        {name: np.concatenate(parts) for name, parts in columns.items()},
        fingerprint=task.fingerprint,
        size=task.params.size,
        fill=task.params.fill,
        num_views=task.params.num_views,
        codec=task.params.codec,
        mask_shard=Path(task.mask_path).name,
    )
    return CropSummary(task.index, len(task.images), next_row, fallbacks)


def _counts(summary: CropSummary) -> dict[str, int]:
    """A shard's counts for the progress bar: images, distinct views, fallbacks."""
    return {"images": summary.images, "views": summary.crops, "fallbacks": summary.fallbacks}


def _progress(counts: dict[str, int]) -> dict[str, object]:
    """The progress bar's postfix: the running mean of distinct views per image, the
    whole-image fallbacks so far."""
    return {
        "views_per_image": f"{counts.get('views', 0) / max(counts.get('images', 0), 1):.1f}",
        "fallbacks": counts.get("fallbacks", 0),
    }


# ------------------------------------------------------------------------ planning
def _check_coverage(
    segment_dir: Path, found: dict[int, Path], uncovered: list[int], expected_shards: int
) -> None:
    """Name the missing mask shards when the images index has images in no shard."""
    if not uncovered:
        return
    expected = range(max(expected_shards, max(found, default=-1) + 1))
    missing = [mask_shard_name(i) for i in expected if i not in found]
    named = (
        (", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if missing
        else "unknown shards"
    )
    raise ArtifactError(
        f"{segment_dir}: mask shard(s) missing: {named} ({len(uncovered)} "
        f"images of the images index have no masks, e.g. image "
        f"{uncovered[0]}); rerun segment"
    )


# The images index columns a crop task's fingerprint covers (its images' rows), in order.
ROW_COLUMNS = ("image_id", "path", "class_id", "split", "pixel_hash")


class ImageRows:
    """The images index's ROW_COLUMNS as Arrow columns sorted by image id: a shard's rows
    are looked up by binary search, so planning holds the columns (tens of bytes per image)
    instead of a Python object per image."""

    def __init__(self, table: pa.Table) -> None:
        ids = table.column("image_id").to_numpy()
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        self.columns = {name: table.column(name).take(order) for name in ROW_COLUMNS}
        self.covered = np.zeros(len(ids), bool)

    def positions(self, ids: list[int]) -> tuple[np.ndarray, list[int]]:
        """Positions of ``ids`` (ascending) in the sorted columns, and the ids not there."""
        wanted = np.asarray(ids, np.int64)
        found = np.searchsorted(self.ids, wanted)
        inside = found < len(self.ids)
        known = inside.copy()
        known[inside] = self.ids[found[inside]] == wanted[inside]
        return found[known], [int(i) for i in wanted[~known]]

    def rows(self, positions: np.ndarray) -> dict[str, list]:
        """The rows at ``positions`` as Python lists per column (marked covered)."""
        self.covered[positions] = True
        return {name: column.take(positions).to_pylist() for name, column in self.columns.items()}

    def uncovered(self) -> list[int]:
        """Image ids no :meth:`rows` call asked for, ascending."""
        return [int(i) for i in self.ids[~self.covered]]


def plan_tasks(params: Params, project_root: Path, out_dir: Path) -> list[CropTask]:
    """One task per mask shard, with its images' index rows and its fingerprint."""
    table, info = read_table(project_root / layout.IMAGES_INDEX, "images", columns=ROW_COLUMNS)
    index = ImageRows(table)
    del table
    segment_dir = project_root / layout.SEGMENT_DIR
    paths = shard_paths(segment_dir)
    if not paths:
        raise ArtifactError(f"{segment_dir}: no mask shards; run segment first (dvc repro)")
    base = json.dumps(
        {
            "crops": result_dict(params.crops),  # speed-only keys (workers) excluded
            "format_version": VERSION,
            "images_index": info["fingerprint"],
        },
        sort_keys=True,
    )
    tasks, found = [], {}
    splits: dict[str, str] = {}  # one str object per split name, shared by the entries
    for path in paths:
        shard_index = mask_shard_index(path)
        found[shard_index] = path
        with MaskShard(path) as shard:
            ids = sorted(int(i) for i in shard)
            mask_fp = shard.fingerprint
        positions, strangers = index.positions(ids)
        if strangers:
            raise ArtifactError(
                f"{path}: image {strangers[0]} is not in the images index; "
                f"the masks are stale, rerun segment"
            )
        rows = index.rows(positions)
        entries = tuple(
            ImageEntry(i, p, c, splits.setdefault(s, s))
            for i, p, c, s in zip(
                rows["image_id"], rows["path"], rows["class_id"], rows["split"], strict=True
            )
        )
        own = json.dumps([list(row) for row in zip(*(rows[k] for k in ROW_COLUMNS), strict=True)])
        tasks.append(
            CropTask(
                shard_index,
                str(path),
                str(out_dir / crop_shard_name(path)),
                str(project_root / params.data.root),
                entries,
                text_fingerprint(base + mask_fp + own),
                params.crops,
            )
        )
    expected = -(-len(index.ids) // params.segment.shard_size)
    _check_coverage(segment_dir, found, index.uncovered(), expected)
    return tasks


# ------------------------------------------------------------------------ assembly
class ShardOrderError(Exception):
    """The crop shards' images are not in ascending image_id order shard after shard."""


def shard_views(task: CropTask) -> dict[str, np.ndarray]:
    """The per-view table a crop shard stores (the crops index rows of its images, as
    crop_shard wrote them), in (image_id, view) order, plus the ``shard`` column."""
    path = Path(task.out_path)
    with CropShard(path) as shard:
        views = shard.views()
    order = np.lexsort((views["view"], views["image_id"]))
    views = {name: values[order] for name, values in views.items()}
    views["shard"] = np.full(len(order), path.name)
    return views


def assemble_index(tasks: list[CropTask], out_dir: Path) -> dict[str, np.ndarray]:
    """The per-view tables of every crop shard, concatenated in (image_id, view) order,
    plus the ``shard`` column (the whole index in memory: :func:`write_index` streams)."""
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    for task in sorted(tasks, key=lambda t: t.index):
        for name, values in shard_views(task).items():
            parts[name].append(values)
    columns = {name: np.concatenate(values) for name, values in parts.items()}
    order = np.lexsort((columns["view"], columns["image_id"]))
    return {name: values[order] for name, values in columns.items()}


def index_arrays(columns: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Arrow columns of the crops table from the assembled numpy columns."""
    fallback = columns["fallback"].astype(bool)
    arrays = {
        name: pa.array(columns[name])
        for name in (
            "image_id",
            "view",
            "mask_index",
            "duplicate_of",
            "area",
            "class_id",
            "row",
            "image_row",
        )
    }
    arrays["box"] = pa.FixedSizeListArray.from_arrays(
        pa.array(columns["box"].reshape(-1).astype(np.int32)), 4
    )
    for name in ("predicted_iou", "stability_score"):
        arrays[name] = pa.array(columns[name], mask=fallback)
    arrays["split"] = pa.array(np.char.decode(columns["split"], "ascii"), pa.string())
    arrays["shard"] = pa.array(columns["shard"], pa.string())
    arrays["fallback"] = pa.array(fallback)
    return arrays


@dataclass
class IndexCounts:
    """What crops_metrics counts, summed shard by shard."""

    views: int = 0
    duplicates: int = 0
    fallback_views: int = 0

    def add(self, columns: dict[str, np.ndarray]) -> None:
        self.views += len(columns["image_id"])
        self.duplicates += int((columns["duplicate_of"] >= 0).sum())
        self.fallback_views += int(columns["fallback"].astype(bool).sum())

    def metrics(self, num_views: int) -> dict:
        """Images, views, fallback images (every view the whole image) and their share,
        duplicate view share, mean distinct views per image."""
        views, duplicates = self.views, self.duplicates
        images = views // num_views
        fallbacks = self.fallback_views // num_views
        return {
            "images": images,
            "views": views,
            "fallback_images": fallbacks,
            "fallback_share": round(fallbacks / max(images, 1), 4),
            "duplicate_view_share": round(duplicates / max(views, 1), 4),
            "mean_distinct_views": round((views - duplicates) / max(images, 1), 3),
        }


def crops_metrics(columns: dict[str, np.ndarray], num_views: int) -> dict:
    """:meth:`IndexCounts.metrics` of the whole index's columns."""
    counts = IndexCounts()
    counts.add(columns)
    return counts.metrics(num_views)


def write_index(
    tasks: list[CropTask],
    out_dir: Path,
    path: Path,
    *,
    fingerprint: str,
    facts: dict[str, object],
    num_views: int,
    row_group_rows: int | None = None,
) -> dict:
    """Write the crops index from the per-view tables the crop shards store, shard after
    shard, holding at most one Parquet row group: a reused shard's index rows are read
    back as it stored them (checksummed, and verified by its reuse check), never recomputed.

    Shards hold consecutive runs of the image ids (segment cuts the sorted index into
    shards), so shard order is index order; should a shard break that order, the index
    is assembled whole in memory and sorted instead. Either way the bytes are those of
    one ``pq.write_table`` of the whole sorted index. Returns the crops metrics.
    """
    ordered = sorted(tasks, key=lambda t: t.index)
    kwargs = {"fingerprint": fingerprint, "facts": facts, "row_group_rows": row_group_rows}
    counts = IndexCounts()
    try:
        with TableWriter(path, "crops", **kwargs) as writer:
            last = None
            for task in ordered:
                views = shard_views(task)
                if len(views["image_id"]) == 0:
                    continue
                if last is not None and views["image_id"][0] <= last:
                    raise ShardOrderError(task.out_path)
                last = views["image_id"][-1]
                counts.add(views)
                writer.write_columns(index_arrays(views))
    except ShardOrderError:
        columns = assemble_index(ordered, out_dir)
        with TableWriter(path, "crops", **kwargs) as writer:
            writer.write_columns(index_arrays(columns))
        return crops_metrics(columns, num_views)
    return counts.metrics(num_views)


def run_crops(params: Params, project_root: Path = Path(".")) -> dict:
    """Write every crop shard that is missing, stale or damaged, then the crops index and
    metrics.

    Args:
        params: the whole params (crops, segment, data sections are read).
        project_root: the project folder.

    Returns:
        The metrics (as in metrics/crops.json) and this run's wall-clock facts (as in
        logs/crops.json).
    """
    project_root = Path(project_root).resolve()  # workers may run elsewhere
    out_dir = project_root / layout.CROPS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(params, project_root, out_dir)
    stage = ShardedStage(
        "crops",
        "crops",
        check_crop_shard,
        crop_shard,
        keep=frozenset({layout.CROPS_INDEX.name}),
        counts=_counts,
        postfix=_progress,
    )
    run = run_shards(
        stage,
        tasks,
        out_dir,
        project_root,
        workers=worker_count(params.crops.workers),
        scheduler=params.segment.scheduler,
    )
    metrics = write_index(
        tasks,
        out_dir,
        project_root / layout.CROPS_INDEX,
        fingerprint=text_fingerprint("".join(t.fingerprint for t in tasks)),
        facts=index_facts(params.crops),
        num_views=params.crops.num_views,
    )
    metrics["shards"] = len(tasks)
    metrics["bytes_per_image"] = round(
        sum(p.stat().st_size for p in crop_shard_paths(out_dir)) / max(metrics["images"], 1)
    )
    write_json(project_root / layout.CROPS_METRICS, metrics)
    return {**metrics, **run.write_log(project_root, "crops")}


def index_facts(params: CropsParams) -> dict[str, object]:
    """The crops index facts: the one documented place where readers (ViewDataset,
    evaluate) find M (``num_views``) and S (``size``), with fill, order, min_box_size.

    Args:
        params: the crops params the index was cut with.

    Returns:
        The facts stored in the index's Parquet metadata.
    """
    return {
        "num_views": params.num_views,
        "size": params.size,
        "fill": params.fill,
        "order": params.order,
        "min_box_size": params.min_box_size,
    }


def summary_line(m: dict, num_views: int) -> str:
    """The stage's one-line summary of run_crops's result, with a warning when most
    images fell back to whole-image views."""
    speed = f", {m['images_per_second']:.1f} images/s" if m["images_per_second"] else ""
    damaged = f", {len(m['shards_damaged'])} damaged rebuilt" if m["shards_damaged"] else ""
    return (
        f"crops: {m['images']} images x {num_views} views in {m['shards']} shards "
        f"({m['shards_reused']} reused{damaged}{speed}); {m['mean_distinct_views']} "
        f"distinct views per image; {m['fallback_images']} whole-image fallbacks "
        f"({percent(m['fallback_share'])})"
        + degenerate_warning(
            m["fallback_share"],
            "have no usable mask",
            "every view of theirs is the whole image; check segment params and crops.min_box_size",
        )
    )
