"""Per-item metrics of one saliency method, gathered image by image during evaluation.

For each test image the top-k prototypes' maps (clean and perturbed copy) on the image
canvas go in; only small per-item arrays are kept (never the maps), and
:meth:`MapStats.results` reduces them to the method's scalars (README: Metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from model.metrics import (
    Absent,
    background_overlap,
    consistency,
    ior,
    mean_of,
    object_overlap,
    parts_in_masks,
    pointing_energy,
    pointing_hit,
    stability,
    top_fraction_mask,
    vlc,
)
from model.metrics.prototypes import NO_PARTS
from model.metrics.saliency import NO_SEGMENTATION

# the scalars of one saliency method, in the order of the metrics JSON
SALIENCY_KEYS = (
    "vlc",
    "object_overlap",
    "background_overlap",
    "ior",
    "pointing_game",
    "pointing_hit",
    "consistency",
    "stability",
    "empty_saliency",
)
_OBJECT_KEYS = (
    ("object_overlap", "obj"),
    ("background_overlap", "bg"),
    ("ior", "ior"),
    ("pointing_game", "energy"),
    ("pointing_hit", "hit"),
)


@dataclass
class MapStats:
    """Per-item metric values of one saliency method, gathered image by image."""

    top_fraction: float
    vlc: list = field(default_factory=list)
    obj: list = field(default_factory=list)
    bg: list = field(default_factory=list)
    ior: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    hit: list = field(default_factory=list)
    hits: list = field(default_factory=list)  # (K, Q) per image with parts
    hits_p: list = field(default_factory=list)
    hit_ids: list = field(default_factory=list)  # (K,) ids of those images
    empty: list = field(default_factory=list)
    any_g: bool = False

    def add(
        self,
        maps: Tensor,
        maps_p: Tensor,
        ids: np.ndarray,
        g: Optional[np.ndarray],
        xy: Optional[np.ndarray],
        vis: Optional[np.ndarray],
    ) -> None:
        """Add one image.

        Args:
            maps: (K, H, W) saliency of its top-k prototypes on the clean image.
            maps_p: (K, H, W) the same on the perturbed copy.
            ids: (K,) the prototypes.
            g: (H, W) bool ground-truth object, or None.
            xy: (Q, 2) part keypoints, or None (then ``vis`` is None too).
            vis: (Q,) bool part visibility.
        """
        s = top_fraction_mask(maps, self.top_fraction)
        s_p = top_fraction_mask(maps_p, self.top_fraction)
        self.vlc.append(vlc(s[None]))
        self.empty.append(100.0 * (s.flatten(1).sum(1) == 0).double().cpu().numpy())
        if g is not None:
            self.any_g = True
            gt = torch.from_numpy(g).to(maps.device)[None]
            self.obj.append(object_overlap(s[None], gt).ravel())
            self.bg.append(background_overlap(s[None], gt).ravel())
            self.ior.append(ior(maps[None], gt, s[None]).ravel())
            self.energy.append(pointing_energy(maps[None], gt).ravel())
            self.hit.append(pointing_hit(maps[None], gt).ravel())
        else:
            for _, name in _OBJECT_KEYS:
                getattr(self, name).append(np.full(maps.shape[0], np.nan))
        if xy is not None:
            self.hits.append(parts_in_masks(s[None], xy[None], vis[None])[0].cpu())
            self.hits_p.append(parts_in_masks(s_p[None], xy[None], vis[None])[0].cpu())
            self.hit_ids.append(np.asarray(ids))

    def results(self, num_prototypes: int, parts_known: bool) -> dict[str, Any]:
        """The method's scalars (SALIENCY_KEYS, in that order).

        Args:
            num_prototypes: prototypes of the model (consistency's denominator).
            parts_known: whether the test set has part keypoints at all.

        Returns:
            key -> float or Absent.
        """
        out: dict[str, Any] = {"vlc": mean_of(self.vlc, "no image with two or more maps")}
        seg = None if self.any_g else Absent(NO_SEGMENTATION)
        for key, name in _OBJECT_KEYS:
            out[key] = seg if seg is not None else mean_of(getattr(self, name))
        if not parts_known or not self.hits:
            out["consistency"] = Absent(NO_PARTS)
            out["stability"] = Absent(NO_PARTS)
        else:
            ids = np.stack(self.hit_ids)
            hits, hits_p = torch.stack(self.hits), torch.stack(self.hits_p)
            out["consistency"] = consistency(ids, hits, num_prototypes)
            out["stability"] = mean_of(
                stability(hits, hits_p, empty_value=float("nan")), "no part in any S or S'"
            )
        out["empty_saliency"] = mean_of(self.empty)
        return out
