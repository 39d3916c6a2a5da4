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
    activation_change,
    background_overlap,
    bounding_box_fill,
    consistency,
    intra_activation_change,
    intra_location_change,
    ior,
    location_change,
    mask_change,
    mask_iou,
    mean_of,
    min_max_mask,
    object_overlap,
    oirr,
    parts_in_masks,
    pointing_energy,
    pointing_hit,
    stability,
    top_fraction_mask,
    vlc,
)
from model.metrics.completeness import COMPLETENESS_NAMES
from model.metrics.features import top_k_features
from model.metrics.prototypes import NO_PARTS, class_unit_sums, inter_distance, intra_pd
from model.metrics.reference import NO_BOX
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
    "iou",
    "oirr",
    "object_overlap_box",
    "background_overlap_box",
    "iou_box",
    "vac",
    "vlc_perturbed",
    "vac_perturbed",
    "vlc_sbox",
    "consistency_sbox",
    "stability_sbox",
)
_OBJECT_KEYS = (
    ("object_overlap", "obj"),
    ("background_overlap", "bg"),
    ("ior", "ior"),
    ("pointing_game", "energy"),
    ("pointing_hit", "hit"),
    ("iou", "iou"),
    ("oirr", "oirr"),
)
_BOX_KEYS = (
    ("object_overlap_box", "obj_box"),
    ("background_overlap_box", "bg_box"),
    ("iou_box", "iou_box"),
)
_FREE_KEYS = (  # no ground truth needed
    ("vac", "vac"),
    ("vlc_perturbed", "vlc_p"),
    ("vac_perturbed", "vac_p"),
    ("vlc_sbox", "vlc_sbox"),
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
    iou: list = field(default_factory=list)
    oirr: list = field(default_factory=list)
    obj_box: list = field(default_factory=list)
    bg_box: list = field(default_factory=list)
    iou_box: list = field(default_factory=list)
    vac: list = field(default_factory=list)
    vlc_p: list = field(default_factory=list)
    vac_p: list = field(default_factory=list)
    vlc_sbox: list = field(default_factory=list)
    box_hits: list = field(default_factory=list)  # (K, Q): parts in S's bounding box
    box_hits_p: list = field(default_factory=list)
    any_g: bool = False
    any_box: bool = False

    def add(
        self,
        maps: Tensor,
        maps_p: Tensor,
        ids: np.ndarray,
        g: Optional[np.ndarray],
        xy: Optional[np.ndarray],
        vis: Optional[np.ndarray],
        box: Optional[np.ndarray] = None,
    ) -> None:
        """Add one image.

        Args:
            maps: (K, H, W) saliency of its top-k prototypes on the clean image.
            maps_p: (K, H, W) the same on the perturbed copy.
            ids: (K,) the prototypes.
            g: (H, W) bool ground-truth object, or None.
            xy: (Q, 2) part keypoints, or None (then ``vis`` is None too).
            vis: (Q,) bool part visibility.
            box: (H, W) bool object box mask (:func:`model.metrics.box_mask`), or None.
        """
        s = top_fraction_mask(maps, self.top_fraction)
        s_p = top_fraction_mask(maps_p, self.top_fraction)
        self.vlc.append(vlc(s[None]))
        self.empty.append(100.0 * (s.flatten(1).sum(1) == 0).double().cpu().numpy())
        self._add_free(maps, maps_p, s, s_p)
        if g is not None:
            self.any_g = True
            gt = torch.from_numpy(g).to(maps.device)[None]
            self.obj.append(object_overlap(s[None], gt).ravel())
            self.bg.append(background_overlap(s[None], gt).ravel())
            self.ior.append(ior(maps[None], gt, s[None]).ravel())
            self.energy.append(pointing_energy(maps[None], gt).ravel())
            self.hit.append(pointing_hit(maps[None], gt).ravel())
            self.iou.append(mask_iou(s[None], gt).ravel())
            self.oirr.append(oirr(maps[None], gt, s[None]).ravel())
        if box is not None:
            self.any_box = True
            b = torch.from_numpy(box).to(maps.device)[None]
            self.obj_box.append(object_overlap(s[None], b).ravel())
            self.bg_box.append(background_overlap(s[None], b).ravel())
            self.iou_box.append(mask_iou(s[None], b).ravel())
        if xy is not None:
            sb, sb_p = bounding_box_fill(s), bounding_box_fill(s_p)
            for out, m in (
                (self.hits, s),
                (self.hits_p, s_p),
                (self.box_hits, sb),
                (self.box_hits_p, sb_p),
            ):
                out.append(parts_in_masks(m[None], xy[None], vis[None])[0].cpu())
            self.hit_ids.append(np.asarray(ids))

    def _add_free(self, maps: Tensor, maps_p: Tensor, s: Tensor, s_p: Tensor) -> None:
        """The metrics without ground truth: VAC among the top-k R, VLC / VAC between the
        clean and the perturbed copy, VLC of S's bounding boxes."""
        r, r_p = maps * s, maps_p * s_p
        self.vac.append(intra_activation_change(r[None]))
        self.vlc_p.append(mask_change(s, s_p))
        self.vac_p.append(activation_change(r, r_p))
        self.vlc_sbox.append(vlc(bounding_box_fill(s)[None]))

    def results(self, num_prototypes: int, parts_known: bool) -> dict[str, Any]:
        """The method's scalars (SALIENCY_KEYS, in that order).

        Args:
            num_prototypes: prototypes of the model (consistency's denominator).
            parts_known: whether the test set has part keypoints at all.

        Returns:
            key -> float or Absent.
        """
        out: dict[str, Any] = {"vlc": mean_of(self.vlc, "no image with two or more maps")}
        for keys, known, reason in (
            (_OBJECT_KEYS, self.any_g, NO_SEGMENTATION),
            (_BOX_KEYS, self.any_box, NO_BOX),
        ):
            for key, name in keys:
                out[key] = mean_of(getattr(self, name)) if known else Absent(reason)
        known = parts_known and bool(self.hits)
        ids = np.stack(self.hit_ids) if known else None
        for suffix, a, b in (
            ("", self.hits, self.hits_p),
            ("_sbox", self.box_hits, self.box_hits_p),
        ):
            if not known:
                out["consistency" + suffix] = out["stability" + suffix] = Absent(NO_PARTS)
                continue
            hits, hits_p = torch.stack(a), torch.stack(b)
            out["consistency" + suffix] = consistency(ids, hits, num_prototypes)
            out["stability" + suffix] = mean_of(
                stability(hits, hits_p, empty_value=float("nan")), "no part in any S or S'"
            )
        out["empty_saliency"] = mean_of(self.empty)
        for key, name in _FREE_KEYS:
            out[key] = mean_of(getattr(self, name))
        return {key: out[key] for key in SALIENCY_KEYS}


# the model's activation-map scalars (README: Metrics), in the order of the metrics JSON
MAP_KEYS = ("plc", "palc", "plc_perturbed", "palc_perturbed", "pac_perturbed")
FEATURE_KEYS = ("intra_fd", "inter_fd")
ACTIVATION_KEYS = MAP_KEYS + FEATURE_KEYS
NO_FEATURES = "the forward gave no feature vectors (return_embeddings)"


def candidate_features(out: Any) -> Optional[Tensor]:
    """(B, L, D) the candidate feature vectors of a forward output, indexed like its
    ``matched``: ProtoMask's view embeddings (B, M, D) as they are, a feature map
    (B, D, h, w) as (B, h*w, D); PIP-Net's presence maps (B, P, h, w) as (B, h*w, P) (its
    features in the reference). None when the output holds none."""
    maps = getattr(out, "maps", None)
    f = maps if maps is not None else getattr(out, "embeddings", None)
    if f is None:
        return None
    return f if f.dim() == 3 else f.flatten(2).transpose(1, 2)


@dataclass
class ActivationStats:
    """Per-item metrics of the top-k prototypes' own activation maps (similarity per
    location, PIP-Net's presence, ProtoMask's similarity per view as an (M, 1) map), and
    the feature distances at their maxima (intra FD per image, inter FD from per-class
    sums of unit vectors, so memory stays O(classes x D))."""

    values: dict = field(default_factory=lambda: {key: [] for key in MAP_KEYS + ("intra_fd",)})
    class_sums: dict = field(default_factory=dict)  # class -> (sum of unit vectors, count)
    features_seen: bool = False

    def add(self, maps: Tensor, maps_p: Tensor) -> None:
        """Add a batch: (B, K, h, w) activation maps of the top-k on the clean input and
        of the same prototypes on the perturbed copy."""
        m, m_p = min_max_mask(maps), min_max_mask(maps_p)
        for key, value in (
            ("plc", intra_location_change(maps)),
            ("palc", vlc(m)),
            ("plc_perturbed", location_change(maps, maps_p)),
            ("palc_perturbed", mask_change(m, m_p)),
            ("pac_perturbed", activation_change(maps, maps_p)),
        ):
            self.values[key].append(value.ravel())

    def add_features(self, out: Any, ids: Tensor, labels: np.ndarray) -> None:
        """Add a batch's feature vectors at its top-k prototypes' best matches: ``out`` the
        forward output on the clean input (:func:`candidate_features`; nothing is added
        when it holds none), ``ids`` (B, K), ``labels`` (B,) true classes."""
        f = candidate_features(out)
        if f is None:
            return
        vectors = top_k_features(f.float(), out.matched, ids)
        self.features_seen = True
        self.values["intra_fd"].append(intra_pd(vectors))
        for c, s, n in zip(*class_unit_sums(vectors, labels), strict=True):
            old_s, old_n = self.class_sums.get(int(c), (0.0, 0.0))
            self.class_sums[int(c)] = (s.cpu() + old_s, float(n) + old_n)

    def merge(self, other: ActivationStats) -> None:
        """Add the items of ``other`` (another share of the same test split)."""
        for key, items in other.values.items():
            self.values[key].extend(items)
        for c, (s, n) in other.class_sums.items():
            old_s, old_n = self.class_sums.get(c, (0.0, 0.0))
            self.class_sums[c] = (s + old_s, n + old_n)
        self.features_seen |= other.features_seen

    def results(self) -> dict[str, Any]:
        """key -> float or Absent (ACTIVATION_KEYS, in that order)."""
        out: dict[str, Any] = {key: mean_of(self.values[key]) for key in MAP_KEYS}
        if not self.features_seen:
            return {**out, **{key: Absent(NO_FEATURES) for key in FEATURE_KEYS}}
        out["intra_fd"] = mean_of(self.values["intra_fd"], "fewer than two prototypes per image")
        classes = sorted(self.class_sums)
        sums = torch.stack([self.class_sums[c][0] for c in classes])
        counts = torch.tensor([self.class_sums[c][1] for c in classes], dtype=torch.float64)
        out["inter_fd"] = inter_distance(sums, counts, "inter FD")
        return out


# output completeness (model.completeness_pass), in the order of the metrics JSON
COMPLETENESS_KEYS = tuple(f"{name}_completeness" for name in COMPLETENESS_NAMES)
COMPLETENESS_OFF = "evaluate.output_completeness is false"


@dataclass
class CompletenessStats:
    """Per-item output-completeness changes (:mod:`model.metrics.completeness`): one item
    per (image, noised prototype)."""

    enabled: bool = True
    values: dict = field(default_factory=lambda: {name: [] for name in COMPLETENESS_NAMES})

    def add(self, changes: dict[str, np.ndarray]) -> None:
        """Add items: name -> (N,) per-item values."""
        for name in COMPLETENESS_NAMES:
            self.values[name].append(changes[name])

    def merge(self, other: CompletenessStats) -> None:
        """Add the items of ``other`` (the batches after these)."""
        for name, items in other.values.items():
            self.values[name].extend(items)

    def results(self) -> dict[str, Any]:
        """key -> float or Absent (COMPLETENESS_KEYS, in that order)."""
        if not self.enabled:
            return {key: Absent(COMPLETENESS_OFF) for key in COMPLETENESS_KEYS}
        return {
            key: mean_of(self.values[name])
            for key, name in zip(COMPLETENESS_KEYS, COMPLETENESS_NAMES, strict=True)
        }
