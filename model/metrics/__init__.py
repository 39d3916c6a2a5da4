"""The evaluate stage's metrics as small pure functions over arrays/tensors.

Value convention (:mod:`model.metrics.common`): a scalar metric is a float or an
:class:`Absent` (not measured, with the reason; never 0); a per-item metric is a float64
numpy array with NaN for undefined items; :func:`mean_of` reduces both.

Modules: ``classification`` (balanced accuracy, top-k, macro F1), ``head`` (global size,
sparsity, NPR), ``parts`` (keypoints -> arrays, parts inside masks), ``saliency`` (S, R,
VLC, object / background overlap, IOR, pointing game), ``prototypes`` (top-k, ranks,
intra / inter PD, consistency, stability, PSC, PRC, CRC), ``features`` (intra / inter FD:
the feature vectors at the top prototypes' best matches), ``segmenter`` (part-set codes,
mask consistency), ``sanity`` (randomisation check), ``reference`` (the reference's other
metrics: IoU, OIRR, object and explanation boxes, map / activation changes, PLC, local
size, entropy).
"""

from model.metrics.classification import (
    abstained_share,
    balanced_accuracy,
    confusion_matrix,
    macro_f1,
    macro_precision,
    macro_recall,
    roc_auc,
    top_k_accuracy,
    top_k_hits,
)
from model.metrics.common import Absent, MetricValue, mean_of, to_jsonable
from model.metrics.features import inter_fd, intra_fd, top_k_features
from model.metrics.head import global_size, npr, sparsity
from model.metrics.parts import keypoint_index, parts_arrays, parts_in_masks
from model.metrics.prototypes import (
    class_unit_sums,
    consistency,
    consistency_per_prototype,
    crc,
    inter_distance,
    inter_pd,
    intra_pd,
    prc,
    psc,
    ranks_of,
    stability,
    top_k_indices,
)
from model.metrics.reference import (
    activation_change,
    activation_entropy,
    bounding_box_fill,
    box_mask,
    intra_activation_change,
    intra_location_change,
    local_size,
    location_change,
    mask_change,
    mask_iou,
    min_max_mask,
    oirr,
)
from model.metrics.saliency import (
    background_overlap,
    ior,
    object_overlap,
    pairwise_iou,
    pointing_energy,
    pointing_hit,
    restrict,
    top_fraction_mask,
    vlc,
)
from model.metrics.sanity import average_ranks, randomisation_verdict, spearman, top_mask_iou
from model.metrics.segmenter import mask_consistency, mask_part_codes

__all__ = [
    "Absent",
    "MetricValue",
    "mean_of",
    "to_jsonable",
    "abstained_share",
    "macro_precision",
    "macro_recall",
    "roc_auc",
    "balanced_accuracy",
    "confusion_matrix",
    "macro_f1",
    "top_k_accuracy",
    "top_k_hits",
    "global_size",
    "npr",
    "sparsity",
    "keypoint_index",
    "parts_arrays",
    "parts_in_masks",
    "background_overlap",
    "ior",
    "object_overlap",
    "pairwise_iou",
    "pointing_energy",
    "pointing_hit",
    "restrict",
    "top_fraction_mask",
    "vlc",
    "class_unit_sums",
    "consistency",
    "consistency_per_prototype",
    "crc",
    "inter_distance",
    "inter_pd",
    "intra_pd",
    "inter_fd",
    "intra_fd",
    "top_k_features",
    "prc",
    "psc",
    "ranks_of",
    "stability",
    "top_k_indices",
    "activation_change",
    "activation_entropy",
    "bounding_box_fill",
    "box_mask",
    "intra_activation_change",
    "intra_location_change",
    "local_size",
    "location_change",
    "mask_change",
    "mask_iou",
    "min_max_mask",
    "oirr",
    "average_ranks",
    "randomisation_verdict",
    "spearman",
    "top_mask_iou",
    "mask_consistency",
    "mask_part_codes",
]
