"""The evaluate stage's scalar metrics of the whole test split (README: Metrics): class-
balanced accuracy, top-3, macro F1, the head's compactness, prototype distances, the
perturbation ranks, and the segmenter's mask consistency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.metrics import (
    Absent,
    MetricValue,
    balanced_accuracy,
    crc,
    global_size,
    inter_pd,
    intra_pd,
    macro_f1,
    mask_consistency,
    mask_part_codes,
    mean_of,
    npr,
    prc,
    psc,
    sparsity,
    top_k_accuracy,
)
from model.metrics.prototypes import NO_PARTS
from pipeline.evaluation_set import TestSet
from pipeline.model_inputs import ViewMasks


@dataclass
class Scores:
    """The model's outputs over the whole test split, concatenated (CPU)."""

    sim: Tensor  # (N, P) prototype similarities, clean input
    sim_p: Tensor  # (N, P) the same on the perturbed copy
    logits: Tensor  # (N, C)
    logits_p: Tensor  # (N, C)
    top_ids: Tensor  # (N, K) top-k prototypes by similarity
    matched: Tensor  # (N, P) ProtoMask: the view each prototype matched


def model_metrics(
    scores: Scores, labels: np.ndarray, head: torch.nn.Module, num_classes: int
) -> dict[str, Any]:
    """Accuracy, compactness, prototype distance and perturbation metrics.

    Args:
        scores: the model's outputs on the test split.
        labels: (N,) true classes.
        head: the prototype head (last layer, prototype vectors).
        num_classes: classes of the dataset.

    Returns:
        key -> float or Absent, in the order of the metrics JSON (mask consistency not
        included: :func:`segmenter_consistency`).
    """
    y = torch.as_tensor(labels)
    pred = scores.logits.argmax(1)
    weight = head.last_layer.weight.detach().cpu()
    vectors = head.prototypes.detach().cpu()[scores.top_ids]
    ids = scores.top_ids
    return {
        "accuracy": balanced_accuracy(y, pred, num_classes),
        "top3_accuracy": top_k_accuracy(y, scores.logits, min(3, num_classes)),
        "macro_f1": macro_f1(y, pred, num_classes),
        "global_size": float(global_size(weight)),
        "sparsity": sparsity(weight),
        "npr": npr(weight),
        "intra_pd": mean_of(intra_pd(vectors), "fewer than two prototypes per image"),
        "inter_pd": inter_pd(vectors, y),
        "psc": mean_of(psc(scores.sim, scores.sim_p, ids)),
        "prc": mean_of(prc(scores.sim, scores.sim_p, ids)),
        "crc": mean_of(crc(scores.logits, scores.logits_p)),
    }


def segmenter_consistency(test: TestSet, masks: ViewMasks) -> MetricValue:
    """Mask consistency of the masks the test images' views were cut from.

    Args:
        test: the evaluated test set.
        masks: its mask shards.

    Returns:
        The metric over the images with part keypoints (distinct masks; a fallback view
        counts as the whole image), or Absent without keypoints or a mask shard.
    """
    if not test.parts_known:
        return Absent(NO_PARTS)
    by_shard: dict[str, list[int]] = {}
    for i, shard in enumerate(test.crop_shards):
        if test.has_parts[i]:
            by_shard.setdefault(shard, []).append(i)
    codes, labels = [], []
    for shard, rows in sorted(by_shard.items()):
        path = masks.path(shard)
        if not path.is_file():
            return Absent(f"mask shard {path.name} not found (run segment)")
        for i in rows:
            codes.append(
                mask_part_codes(masks.distinct(test, i), test.part_xy[i], test.part_visible[i])
            )
            labels.append(int(test.labels[i]))
    return mask_consistency(codes, np.asarray(labels))
