"""Quality of the segmenter ("mask consistency").

**Part-set code.** For one image with masks (M, H, W) and keypoints (Q parts), the code of
a mask is the bitmask sum over visible parts q inside the mask of 2**q (q = part_id - 1,
keypoint pixel rule of :mod:`model.metrics.parts`). Code 0 = a mask containing no visible
keypoint (typically background). Q <= 62.

**Mask consistency** (the reference's ``evaluate_mask_consistency``): for every class c
with n_c images, count for every code the number of images of c that have AT LEAST ONE mask
with that code (an image contributes each of its distinct codes once), h_c(code) =
count / n_c. The class's score is the mean of h_c over the codes that occur (h_c > 0); the
metric is 100 * the mean over classes with images. Range (0, 100]: 100 = every image of
a class yields exactly the same set of part-set codes; small = each image cuts the parts
differently. The reference keeps code 0 in the histogram (``include_empty_code=True``,
our default); pass False to score only masks that contain a part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from model.metrics.common import Absent, ArrayLike, MetricValue, as_bool, as_tensor
from model.metrics.parts import parts_in_masks

NO_PARTS = "no ground-truth part keypoints"


def mask_part_codes(masks: ArrayLike, part_xy: ArrayLike, part_visible: ArrayLike) -> np.ndarray:
    """(M,) int64 part-set code of each mask of one image.

    ``masks`` (M, H, W) bool; ``part_xy`` (Q, 2); ``part_visible`` (Q,) bool.
    """
    m = as_bool(masks)
    vis = as_bool(part_visible)
    q = vis.shape[-1]
    if q > 62:
        raise ValueError(f"at most 62 parts fit an int64 code, got {q}")
    if m.shape[0] == 0:
        return np.zeros(0, np.int64)
    inside = parts_in_masks(m[None], as_tensor(part_xy)[None], vis[None])[0]  # (M, Q)
    weights = torch.pow(2, torch.arange(q, device=inside.device, dtype=torch.long))
    return (inside.long() * weights).sum(-1).cpu().numpy().astype(np.int64)


def mask_consistency(
    codes: Optional[Sequence[ArrayLike]], labels: ArrayLike, include_empty_code: bool = True
) -> MetricValue:
    """Mask consistency in (0, 100] (see module doc).

    ``codes``: per image the (M_i,) codes of its masks (:func:`mask_part_codes`), None when
    the dataset has no keypoints (-> Absent). ``labels`` (N,) class ids. Images listed with
    no mask (or, with ``include_empty_code=False``, no part-containing mask) still count in
    n_c; a class none of whose images has a (qualifying) mask scores 0. Absent when there
    is no image.
    """
    if codes is None:
        return Absent(NO_PARTS)
    y = np.asarray(as_tensor(labels, torch.long).cpu()).reshape(-1)
    if len(codes) != y.size:
        raise ValueError(f"{len(codes)} code arrays for {y.size} labels")
    if y.size == 0:
        return Absent("no images")
    arrays = [np.asarray(as_tensor(c, torch.long).cpu()).reshape(-1) for c in codes]
    image = np.repeat(np.arange(y.size), [a.size for a in arrays])
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    if not include_empty_code:
        image, flat = image[flat != 0], flat[flat != 0]
    pairs = np.unique(np.stack([image, flat], 1), axis=0)  # distinct codes per image
    class_code, counts = np.unique(
        np.stack([y[pairs[:, 0]], pairs[:, 1]], 1), axis=0, return_counts=True
    )
    classes, n_images = np.unique(y, return_counts=True)
    per_class = np.zeros(classes.size)
    if class_code.size:
        c_idx = np.searchsorted(classes, class_code[:, 0])
        share = counts / n_images[c_idx]
        sums = np.bincount(c_idx, weights=share, minlength=classes.size)
        n_codes = np.bincount(c_idx, minlength=classes.size)
        per_class = np.where(n_codes > 0, sums / np.maximum(n_codes, 1), 0.0)
    return float(100.0 * per_class.mean())
