"""The evaluate stage's scalar metrics of the whole test split (README: Metrics): class-
balanced accuracy, top-3, macro F1, the head's compactness, prototype distances, the
perturbation ranks, and the segmenter's mask consistency.

The compactness metrics read a (K classes, P prototypes) weight matrix,
:func:`class_prototype_weights`: the last layer's weight (ProtoMask, ProtoPNet); ProtoPool's
effective weights under the hard slot assignment, ``head.prototype_weights()``,
W_eff[k, p] = sum_{slots (c, s) filled by p} W[k, c S + s]; PIP-Net's relu(W). A ProtoPool
prototype that fills slots of several classes counts once in the global size (a column of
W_eff with some weight > 1e-3), and once per class it is connected to in sparsity and NPR
(an entry W_eff[k, p] per class k; two slots of one class filled by the same prototype sum
into one entry); a pool prototype no slot uses has a zero column (counted as sparse, not
in the global size). PIP-Net's prototypes are softmax channels, not vectors in a latent
space: its intra/inter PD are absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.metrics import (
    Absent,
    MetricValue,
    abstained_share,
    activation_change,
    activation_entropy,
    balanced_accuracy,
    crc,
    global_size,
    inter_pd,
    intra_pd,
    local_size,
    macro_f1,
    macro_precision,
    macro_recall,
    mask_consistency,
    mask_part_codes,
    mean_of,
    npr,
    prc,
    psc,
    roc_auc,
    sparsity,
    top_k_accuracy,
)
from model.metrics.prototypes import NO_PARTS
from model.presence_saliency import PresenceHead
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
    activation: dict = field(default_factory=dict)  # the activation-map scalars (PLC ...)


def model_metrics(
    scores: Scores, labels: np.ndarray, head: torch.nn.Module, num_classes: int
) -> dict[str, Any]:
    """Accuracy, compactness, prototype distance and perturbation metrics.

    Args:
        scores: the model's outputs on the test split.
        labels: (N,) true classes.
        head: the prototype head (class-prototype weights, prototype vectors; a PIP-Net
            :class:`model.presence_saliency.PresenceHead` has no PD).
        num_classes: classes of the dataset.

    Returns:
        key -> float or Absent, in the order of the metrics JSON (mask consistency not
        included: :func:`segmenter_consistency`).
    """
    y = torch.as_tensor(labels)
    pred = scores.logits.argmax(1)
    weight = class_prototype_weights(head)
    vectors = head.prototypes.detach().cpu()[scores.top_ids]
    ids = scores.top_ids
    logits = (scores.logits.double(), scores.logits_p.double())  # CAC on probabilities
    metrics = {
        "balanced_accuracy": balanced_accuracy(y, pred, num_classes),
        "top3_accuracy": top_k_accuracy(y, scores.logits, min(3, num_classes)),
        "macro_f1": macro_f1(y, pred, num_classes),
        "precision": macro_precision(y, pred, num_classes),
        "recall": macro_recall(y, pred, num_classes),
        "roc_auc": roc_auc(y, scores.logits),
        "abstained": abstained_share(scores.logits),
        "global_size": float(global_size(weight)),
        "sparsity": sparsity(weight),
        "npr": npr(weight),
        "intra_pd": mean_of(intra_pd(vectors), "fewer than two prototypes per image"),
        "inter_pd": inter_pd(vectors, y),
        "psc": mean_of(psc(scores.sim, scores.sim_p, ids)),
        "prc": mean_of(prc(scores.sim, scores.sim_p, ids)),
        "crc": mean_of(crc(scores.logits, scores.logits_p)),
        "cac": mean_of(activation_change(*(z.softmax(1) for z in logits), dims=1)),
        "local_size": mean_of(local_size(scores.sim), "no image with a positive similarity"),
        "entropy": mean_of(activation_entropy(scores.sim, ids), "no prototype in a top-k"),
        **scores.activation,
    }
    if isinstance(head, PresenceHead):
        absent = Absent("PIP-Net's prototypes are softmax channels, not latent vectors")
        metrics.update(intra_pd=absent, inter_pd=absent)
    return metrics


def class_prototype_weights(head: torch.nn.Module) -> Tensor:
    """(K, P) weight from each prototype to each class, on the CPU (module doc):
    ``head.prototype_weights()`` where the head has it (ProtoPool, PIP-Net), else the
    last layer's weight."""
    weights = getattr(head, "prototype_weights", None)
    w = weights() if callable(weights) else head.last_layer.weight
    return w.detach().float().cpu()


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
