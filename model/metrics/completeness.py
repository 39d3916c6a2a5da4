"""Output completeness (the reference's ``evaluate_output_completeness``): does a
prototype's explanation hold what the model used? Gaussian noise is added to the input
everywhere outside the bounding box of the prototype's S; if the explanation is complete,
the prototype's saliency, activation and score hardly change.

For an image's r-th top prototype p, with S, R (:mod:`model.metrics.saliency`) and its
activation map A (:mod:`model.metrics.reference`) on the clean input, and S~, R~, A~ on
the copy noised outside the box of S (:func:`pipeline.perturbation.noise_outside_box`):

* VLC = 100 (1 - IoU(S, S~)); VLC_sbox = 100 (1 - IoU(box(S), box(S~))), the boxes of
  the two masks (the reference's ``use_bbox`` form: 1 - box IoU); VAC = 100 (1 - sum min(R_(i), R~_(i)) / sum max(...)),
  values sorted in descending order (:func:`model.metrics.mask_change`,
  :func:`model.metrics.activation_change`);
* PLC = |dr| + |dc| between the maxima of A and A~, in map cells; PALC = 100 (1 -
  IoU) of their min-max masks (> 0.5); PAC = the VAC formula on A, A~;
* PSC = 100 |s~_p - s_p| / s_p (s: the prototype's score, its best similarity or
  PIP-Net's pooled presence); PRC = |rank~(p) - rank(p)| among all prototypes.

Lower is better for all seven. Per-item values, float64, NaN where undefined (as the
functions they use say).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from model.metrics.common import ArrayLike, as_bool, as_tensor
from model.metrics.prototypes import prc, psc
from model.metrics.reference import (
    activation_change,
    bounding_box_fill,
    location_change,
    mask_change,
    min_max_mask,
)
from model.metrics.saliency import top_fraction_mask

# the per-item changes, in the order of the metrics JSON (keys: name + "_completeness")
COMPLETENESS_NAMES = ("vlc", "vlc_sbox", "vac", "plc", "psc", "prc", "palc", "pac")


def explanation_box(S: ArrayLike) -> Optional[tuple[int, int, int, int]]:
    """Inclusive (x0, y0, x1, y1) bounding box of a mask S (H, W); None when S is empty
    (the reference's ``bounding_box`` then gives (0, 0, 0, 0), one pixel)."""
    s = as_bool(S)
    if s.dim() != 2:
        raise ValueError(f"S must be (H, W), got {tuple(s.shape)}")
    rows, cols = s.any(dim=1).nonzero(), s.any(dim=0).nonzero()
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def completeness_changes(
    saliency: ArrayLike,
    saliency_noised: ArrayLike,
    activation: ArrayLike,
    activation_noised: ArrayLike,
    scores: ArrayLike,
    scores_noised: ArrayLike,
    ids: ArrayLike,
    top_fraction: float,
) -> dict[str, np.ndarray]:
    """The eight changes (module doc) per item n: one prototype ``ids[n]`` of one image,
    clean vs its own noised copy.

    Args:
        saliency: (N, H, W) the prototype's saliency on the clean input (image canvas).
        saliency_noised: (N, H, W) the same on the noised copy.
        activation: (N, h, w) the prototype's activation map on the clean input.
        activation_noised: (N, h, w) the same on the noised copy.
        scores: (N, P) every prototype's score on the clean input.
        scores_noised: (N, P) the same on the noised copy.
        ids: (N,) the prototype of each item.
        top_fraction: the share of pixels forming S.

    Returns:
        name (:data:`COMPLETENESS_NAMES`) -> (N,) float64.
    """
    sal = as_tensor(saliency).float()
    sal_n = as_tensor(saliency_noised, device=sal.device).float()
    s, s_n = top_fraction_mask(sal, top_fraction), top_fraction_mask(sal_n, top_fraction)
    a = as_tensor(activation).double()
    a_n = as_tensor(activation_noised, device=a.device).double()
    i = as_tensor(ids).long().reshape(-1, 1)
    out = {
        "vlc": mask_change(s, s_n),
        "vlc_sbox": mask_change(bounding_box_fill(s), bounding_box_fill(s_n)),
        "vac": activation_change(sal * s, sal_n * s_n),
        "plc": location_change(a, a_n).astype(np.float64),
        "psc": psc(scores, scores_noised, i)[:, 0],
        "prc": prc(scores, scores_noised, i)[:, 0].astype(np.float64),
        "palc": mask_change(min_max_mask(a), min_max_mask(a_n)),
        "pac": activation_change(a, a_n),
    }
    return {name: np.asarray(out[name], np.float64).reshape(-1) for name in COMPLETENESS_NAMES}
