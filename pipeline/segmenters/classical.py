"""The offline default segmenter: multi-scale scikit-image regions emitted as SAM-like records.

Each image is over-segmented at ``levels`` granularities (felzenszwalb with scale
``scale * 4**k``, or SLIC with ``n_segments / 4**k``), like SAM's several masks per
prompt. Every region becomes a mask. Record fields keep SAM's names with documented
stand-ins:

- ``stability_score``: the best IoU of the region with any region of the neighbouring
  granularities (how stable it is when the scale changes; 1.0 with one level);
- ``predicted_iou``: the share of the region's box that the region fills;
- ``points``: the region's centre of mass (the "prompt").

Regions less stable than ``stability_score_thresh`` are dropped (SAM drops unstable
masks the same way); regions found at several granularities (IoU above ``dedup_iou``)
are kept once.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import felzenszwalb, slic

from pipeline.params import ClassicalParams
from pipeline.segmenters.base import MaskSet


def label_levels(image: np.ndarray, cfg: ClassicalParams) -> list[np.ndarray]:
    """One dense label map per granularity, finest first."""
    maps = []
    for k in range(cfg.levels):
        if cfg.method == "felzenszwalb":
            labels = felzenszwalb(
                image, scale=cfg.scale * 4**k, sigma=cfg.sigma, min_size=cfg.min_size * 2**k
            )
        elif cfg.method == "slic":
            labels = slic(
                image,
                n_segments=max(2, cfg.n_segments // 4**k),
                compactness=cfg.compactness,
                sigma=cfg.sigma,
                start_label=0,
                enforce_connectivity=True,
            )
        else:
            raise ValueError(f"unknown classical method {cfg.method!r}")
        maps.append(np.unique(labels, return_inverse=True)[1].reshape(labels.shape))
    return maps


def _iou_table(
    a: np.ndarray, b: np.ndarray, na: int, nb: int, area_a: np.ndarray, area_b: np.ndarray
) -> np.ndarray:
    """IoU of every region of label map ``a`` with every region of ``b`` (contingency)."""
    inter = np.bincount(a.ravel() * nb + b.ravel(), minlength=na * nb).reshape(na, nb)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / np.maximum(union, 1)


def segment_classical(image: np.ndarray, cfg: ClassicalParams) -> MaskSet:
    """Masks of an RGB uint8 image, largest first."""
    height, width = image.shape[:2]
    maps = label_levels(image, cfg)
    counts = [int(m.max()) + 1 for m in maps]
    areas = [np.bincount(m.ravel(), minlength=n) for m, n in zip(maps, counts, strict=False)]
    tables = {
        (k, j): _iou_table(maps[k], maps[j], counts[k], counts[j], areas[k], areas[j])
        for k in range(len(maps))
        for j in range(len(maps))
        if j != k
    }
    stability = []
    for k in range(len(maps)):
        neighbours = [tables[(k, j)].max(axis=1) for j in (k - 1, k + 1) if (k, j) in tables]
        stability.append(np.max(neighbours, axis=0) if neighbours else np.ones(counts[k]))

    total = height * width
    keep: list[tuple[int, int]] = []  # (level, label), finest level first
    kept_per_level: list[list[int]] = [[] for _ in maps]
    for k in range(len(maps)):
        frac = areas[k] / total
        for label in np.flatnonzero(
            (frac >= cfg.min_area_fraction)
            & (frac <= cfg.max_area_fraction)
            & (stability[k] >= cfg.stability_score_thresh)
        ):
            if any(
                kept_per_level[j] and tables[(k, j)][label, kept_per_level[j]].max() > cfg.dedup_iou
                for j in range(k)
            ):
                continue
            keep.append((k, int(label)))
            kept_per_level[k].append(int(label))
    if not keep:
        return MaskSet.empty(height, width)
    keep.sort(key=lambda kl: (-areas[kl[0]][kl[1]], kl[0], kl[1]))
    keep = keep[: cfg.max_masks]
    masks = np.stack([maps[k] == label for k, label in keep])
    ys, xs = np.mgrid[0:height, 0:width]
    area = masks.reshape(len(keep), -1).sum(axis=1)
    centres = np.stack(
        [
            (masks * xs).reshape(len(keep), -1).sum(1) / area,
            (masks * ys).reshape(len(keep), -1).sum(1) / area,
        ],
        axis=1,
    )
    result = MaskSet.from_binary_masks(masks, np.zeros(len(keep)), np.zeros(len(keep)), centres)
    box_area = (result.boxes[:, 2] - result.boxes[:, 0] + 1) * (
        result.boxes[:, 3] - result.boxes[:, 1] + 1
    )
    result.predicted_iou = (result.areas / box_area).astype(np.float32)
    result.stability_score = np.asarray([stability[k][label] for k, label in keep], np.float32)
    return result
