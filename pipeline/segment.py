"""The segment stage's work: images index -> mask shards, shard by shard through dask.

Images are sorted by id and cut into shards of ``segment.shard_size``. Each shard is a
task; its file carries a fingerprint of the segment params, the images index, the
checkpoint's hash and the shard's image ids. A rerun keeps every shard whose fingerprint
matches and that reads back intact (a full, checksummed read; a damaged one is named and
rebuilt), and redoes the rest, so an interrupted run resumes and ends with the same bytes.

metrics/segment.json holds only what the inputs and params decide; wall-clock facts
(seconds, images/s, shards reused) go to the run log logs/segment.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.atomic import write_json
from pipeline.errors import ImageDecodeError, ProtomaskError
from pipeline.execution import degenerate_warning, local_worker_count, percent
from pipeline.imageio import load_rgb, resolve_inside
from pipeline.mask_shards import (
    PREFIX,
    ImageResult,
    MaskShard,
    check_mask_shard,
    mask_shard_name,
    write_shard,
)
from pipeline.params import Params, SegmentParams, fingerprint, result_fingerprint, text_fingerprint
from pipeline.progress import ShardReporter
from pipeline.sharded import ShardedStage, run_shards
from pipeline.tables import read_table

_SEGMENTERS: dict[str, object] = {}  # per worker process: the loaded model, built once


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: which images, where to write, and what fingerprint to stamp."""

    index: int
    image_ids: tuple[int, ...]
    paths: tuple[str, ...]
    data_root: str
    out_path: str
    fingerprint: str
    checkpoint_sha256: str
    params: SegmentParams

    @property
    def num_images(self) -> int:
        """Images of the shard."""
        return len(self.image_ids)


@dataclass(frozen=True)
class ShardSummary:
    """What a finished shard holds."""

    index: int
    images: int
    masks: int
    without_masks: int  # images with no mask, failed ones included
    failures: tuple[tuple[int, str], ...]
    skipped: bool = False


def _segmenter(params: SegmentParams):
    """The segmenter of this worker process, loaded on first use."""
    from pipeline.segmenters.loading import build_segmenter

    key = fingerprint(params)
    if key not in _SEGMENTERS:
        worker_index = 0
        try:
            from dask.distributed import get_worker

            name = get_worker().name
            worker_index = name if isinstance(name, int) else 0
        except (ImportError, ValueError):
            pass
        _SEGMENTERS.clear()
        _SEGMENTERS[key] = build_segmenter(params, worker_index)
    return _SEGMENTERS[key]


def _images_per_batch(params: SegmentParams) -> int:
    """Images handed to the segmenter at once (SAM models batch them; classical: one)."""
    if params.backend == "sam":
        return params.sam.images_per_batch
    if params.backend == "sam2":
        return params.sam2.images_per_batch
    return 1


def segment_shard(task: ShardTask) -> ShardSummary:
    """Segment the images of one shard and write it (runs on a dask worker)."""
    segment = _segmenter(task.params)
    root = Path(task.data_root)
    results: list[ImageResult] = []
    batch_size = _images_per_batch(task.params)
    pending: list[tuple[int, object]] = []
    report = ShardReporter(task.out_path)

    def flush() -> None:
        if not pending:
            return
        try:
            mask_sets = segment([image for _, image in pending])
            results.extend(ImageResult(i, m) for (i, _), m in zip(pending, mask_sets, strict=False))
        except Exception as exc:  # noqa: BLE001 - one bad batch: retry image by image
            if len(pending) == 1:
                results.append(
                    ImageResult(
                        pending[0][0], failure=f"segmenter error: {type(exc).__name__}: {exc}"
                    )
                )
            else:
                for item in list(pending):
                    pending[:] = [item]
                    flush()
        pending.clear()

    for image_id, rel in zip(task.image_ids, task.paths, strict=False):
        try:
            image = load_rgb(resolve_inside(root, rel))
        except ImageDecodeError as exc:
            flush()
            results.append(ImageResult(image_id, failure=exc.reason))
            continue
        pending.append((image_id, image))
        if len(pending) >= batch_size:
            flush()
        report.send(lambda: _image_counts(results))
    flush()
    results.sort(key=lambda r: r.image_id)
    write_shard(
        Path(task.out_path),
        results,
        fingerprint=task.fingerprint,
        backend=task.params.backend,
        checkpoint_sha256=task.checkpoint_sha256,
    )
    return ShardSummary(
        task.index,
        len(results),
        sum(len(r.masks) for r in results if r.masks is not None),
        sum(1 for r in results if r.masks is None or len(r.masks) == 0),
        tuple((r.image_id, r.failure) for r in results if r.failure),
    )


def plan_tasks(params: Params, project_root: Path, out_dir: Path) -> list[ShardTask]:
    """Cut the images index into shard tasks with their fingerprints."""
    table, info = read_table(
        project_root / layout.IMAGES_INDEX, "images", columns=["image_id", "path"]
    )
    # sorted by image id as Arrow columns (tens of bytes per image), cut shard by shard
    order = np.argsort(table.column("image_id").to_numpy(), kind="stable")
    ids, paths = (table.column(name).take(order) for name in ("image_id", "path"))
    del table
    seg = params.segment
    checkpoint_sha = ""
    if seg.backend == "sam":
        from pipeline.segmenters.loading import check_checkpoint, file_sha256

        # before any worker starts: a wrong model_type is one line, not a worker's traceback
        checkpoint_sha = file_sha256(check_checkpoint(seg))
    elif seg.backend == "sam2":
        from pipeline.segmenters.sam2_loading import check_sam2

        checkpoint_sha = check_sam2(seg)
    # Settings that change the masks; device, workers, scheduler and batch sizes do not.
    semantic = {"classical": seg.classical, "sam": seg.sam, "sam2": seg.sam2}[seg.backend]
    base = result_fingerprint(semantic) + seg.backend + info["fingerprint"] + checkpoint_sha
    tasks = []
    for index, start in enumerate(range(0, len(ids), seg.shard_size)):
        chunk_ids = tuple(ids.slice(start, seg.shard_size).to_pylist())
        fp = text_fingerprint(base + json.dumps(chunk_ids))
        tasks.append(
            ShardTask(
                index,
                chunk_ids,
                tuple(paths.slice(start, seg.shard_size).to_pylist()),
                str(project_root / params.data.root),
                str(out_dir / mask_shard_name(index)),
                fp,
                checkpoint_sha,
                seg,
            )
        )
    return tasks


def _image_counts(results: list[ImageResult]) -> dict[str, int]:
    """A running shard's counts for the progress bar: images, masks, failed images."""
    return {
        "images": len(results),
        "masks": sum(len(r.masks) for r in results if r.masks is not None),
        "failed": sum(1 for r in results if r.failure),
    }


def _counts(summary: ShardSummary) -> dict[str, int]:
    """A finished shard's counts for the progress bar (as :func:`_image_counts`)."""
    return {"images": summary.images, "masks": summary.masks, "failed": len(summary.failures)}


def _progress(counts: dict[str, int]) -> dict[str, object]:
    """The progress bar's postfix: the running mean of masks per image (of the images
    that did not fail, as in the metrics), failures so far."""
    segmented = counts.get("images", 0) - counts.get("failed", 0)
    return {
        "masks_per_image": f"{counts.get('masks', 0) / max(segmented, 1):.1f}",
        "failed": counts.get("failed", 0),
    }


def run_segment(params: Params, project_root: Path = Path(".")) -> dict:
    """Write every shard that is missing, stale or damaged.

    Args:
        params: the whole params (segment and data sections are read).
        project_root: the project folder.

    Returns:
        The stage's metrics (as in metrics/segment.json) and this run's wall-clock facts
        (as in logs/segment.json).
    """
    project_root = Path(project_root).resolve()  # workers may run elsewhere
    out_dir = project_root / layout.SEGMENT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(params, project_root, out_dir)
    stage = ShardedStage(
        "segment", PREFIX, check_mask_shard, segment_shard, counts=_counts, postfix=_progress
    )
    run = run_shards(
        stage,
        tasks,
        out_dir,
        project_root,
        workers=local_worker_count(params.segment),
        scheduler=params.segment.scheduler,
    )
    summaries = [_summary_of_existing(t) for t in tasks if t.out_path not in run.rebuilt]
    summaries = sorted(summaries + run.results, key=lambda s: s.index)
    failures = [f for s in summaries for f in s.failures]
    metrics = segment_metrics(summaries, len(tasks), params.segment.backend)
    write_json(project_root / layout.SEGMENT_METRICS, metrics)
    write_json(
        out_dir / "failures.json",
        [{"image_id": i, "reason": r} for i, r in failures],
        indent=1,
        sort_keys=False,
        newline=False,
    )
    facts = run.write_log(project_root, "segment")
    images = metrics["images"]
    if images and len(failures) == images:
        raise ProtomaskError(
            f"segment: every image failed (first: image {failures[0][0]}: "
            f"{failures[0][1]}); see {out_dir / 'failures.json'}"
        )
    return {**metrics, **facts}


def segment_metrics(summaries: list[ShardSummary], shards: int, backend: str) -> dict:
    """What the inputs and params decide: images, masks, masks per image (of the images
    that did not fail), the share of images without any mask, failures."""
    images = sum(s.images for s in summaries)
    failed = sum(len(s.failures) for s in summaries)
    masks = sum(s.masks for s in summaries)
    without = sum(s.without_masks for s in summaries)
    return {
        "images": images,
        "shards": shards,
        "masks": masks,
        "masks_per_image": round(masks / max(images - failed, 1), 3),
        "images_without_masks": without,
        "no_mask_share": round(without / max(images, 1), 4),
        "failed_images": failed,
        "backend": backend,
    }


def summary_line(m: dict) -> str:
    """The stage's one-line summary of run_segment's result, with a warning when most
    images have no mask (the views of such an image are the whole image)."""
    speed = f", {m['images_per_second']:.2f} images/s" if m["images_per_second"] else ""
    damaged = f", {len(m['shards_damaged'])} damaged rebuilt" if m["shards_damaged"] else ""
    return (
        f"segment: {m['images']} images in {m['shards']} shards ({m['shards_reused']} "
        f"reused{damaged}{speed}); {m['masks_per_image']} masks per image; "
        f"{percent(m['no_mask_share'])} of images without a mask; "
        f"{m['failed_images']} failed"
        + degenerate_warning(
            m["no_mask_share"],
            "have no mask",
            "their views will be the whole image; check segment params",
        )
    )


def _summary_of_existing(task: ShardTask) -> ShardSummary:
    """The summary of a reused shard, read from its file."""
    with MaskShard(Path(task.out_path)) as shard:
        return ShardSummary(
            task.index,
            len(task.image_ids),
            shard.num_masks,
            shard.images_without_masks,
            tuple(shard.failures()),
            skipped=True,
        )
