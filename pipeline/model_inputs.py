"""The evaluate stage's model inputs: the stored (clean) input of each test image and the
same input cut again from a perturbed copy of the image.

ProtoMask sees an image's M views: the clean ones are read from the crop shards, the
perturbed ones cut from the perturbed pixels with the same boxes, masks and fill as the
crops stage (:func:`pipeline.views.cut_planned_views`, the function crops itself uses).
Every other model (ProtoPNet, ProtoPool, PIP-Net) sees the whole image resized to
``baseline_image_size``.

:data:`KINDS` is the one place that says what each model kind is to the evaluate stage
(adding a model is one entry):

============ ========== ============ ====== ===============================================
kind         full_image native       pushed ``upsampled`` (the native second method)
============ ========== ============ ====== ===============================================
protomask    no (views) none         yes    none (a view's embedding has no map)
protopnet    yes        similarity   yes    the patch-similarity map, upsampled
protopool    yes        similarity   yes    the patch-similarity map, upsampled
pipnet       yes        presence     no     the softmax presence map, upsampled
============ ========== ============ ====== ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from pipeline import layout
from pipeline.crop_shards import CropShard
from pipeline.evaluation_set import TestSet
from pipeline.mask_shards import MaskShard
from pipeline.params import Params, TrainParams
from pipeline.segmenters.base import MaskSet
from pipeline.view_datasets import FullImageDataset, ViewDataset
from pipeline.views import cut_planned_views, decode_masks, resize_square, view_owners


@dataclass(frozen=True)
class ModelKind:
    """What the evaluate stage needs to know of a model kind.

    ``full_image``: the input is the whole image at ``baseline_image_size`` (else the M
    stored views). ``native``: the model's own local explanation, scored as the second
    method ``upsampled``: ``similarity`` (log similarity of the distance map over patches),
    ``presence`` (PIP-Net's softmax presence map) or None. ``pushed``: the prototypes
    were projected onto training patches or views (train's push.json).
    """

    name: str
    title: str
    full_image: bool
    native: Optional[str]
    pushed: bool

    @property
    def presence(self) -> bool:
        """Prototypes are channels of a presence map, not vectors compared by distance."""
        return self.native == "presence"

    def methods(self, saliency: str) -> list[str]:
        """The saliency methods scored: ``saliency`` and, with a native map, ``upsampled``."""
        return [saliency] + (["upsampled"] if self.native else [])


KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind("protomask", "ProtoMask", full_image=False, native=None, pushed=True),
        ModelKind("protopnet", "ProtoPNet (baseline)", True, "similarity", pushed=True),
        ModelKind("protopool", "ProtoPool (baseline)", True, "similarity", pushed=True),
        ModelKind("pipnet", "PIP-Net (baseline)", True, "presence", pushed=False),
    )
}


def model_kind(kind: str) -> ModelKind:
    """The :data:`KINDS` entry of ``kind`` (ValueError for an unknown one)."""
    if kind not in KINDS:
        raise ValueError(f"model must be one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind]


class ViewMasks:
    """The mask shards the views of the test images were cut from.

    Each crop shard's mask shard is looked up once (its ``mask_shard`` attribute) and each
    mask shard is opened once, on first use; close() (or ``with``) closes them.
    """

    def __init__(self, project_root: Path) -> None:
        self.root = Path(project_root)
        self._paths: dict[str, Path] = {}
        self._open: dict[Path, MaskShard] = {}

    def __enter__(self) -> ViewMasks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every mask shard opened so far."""
        for shard in self._open.values():
            shard.close()
        self._open.clear()

    def path(self, crop_shard: str) -> Path:
        """The mask shard of the crop shard named ``crop_shard``."""
        if crop_shard not in self._paths:
            with CropShard(self.root / layout.CROPS_DIR / crop_shard) as shard:
                self._paths[crop_shard] = self.root / layout.SEGMENT_DIR / shard.mask_shard
        return self._paths[crop_shard]

    def masks(self, crop_shard: str, image_id: int) -> MaskSet:
        """The masks of image ``image_id``, whose views are in ``crop_shard``."""
        path = self.path(crop_shard)
        if path not in self._open:
            self._open[path] = MaskShard(path)
        return self._open[path].masks(int(image_id))

    def distinct(self, test: TestSet, i: int) -> np.ndarray:
        """(D, H, W) bool: the distinct masks the views of test row ``i`` show, in mask
        order; the whole image first where a view shows it (a fallback view)."""
        masks = self.masks(test.crop_shards[i], int(test.image_ids[i]))
        h, w = int(test.sizes[i][0]), int(test.sizes[i][1])
        chosen = sorted({int(v) for v in test.mask_index[i]})
        decoded = []
        if any(v < 0 for v in chosen):
            decoded.append(np.ones((1, h, w), bool))
        keep = [v for v in chosen if v >= 0]
        if keep:
            decoded.append(decode_masks(masks.height, masks.width, [masks.rles[v] for v in keep]))
        return np.concatenate(decoded) if decoded else np.zeros((0, h, w), bool)


class ModelInputs:
    """Clean and perturbed model inputs of the test images; ``masks`` holds the mask shards
    it opens (close them when done)."""

    def __init__(self, kind: str, project_root: Path, params: Params, train: TrainParams) -> None:
        self.kind = kind
        self.full_image = model_kind(kind).full_image
        self.data_root = project_root / params.data.root
        self.crops_dir = project_root / layout.CROPS_DIR
        if not self.full_image:
            self.dataset = ViewDataset(self.crops_dir, "test")
            self.size = self.dataset.size
        else:
            self.dataset = FullImageDataset(
                self.crops_dir,
                "test",
                size=train.model.baseline_image_size,
                data_root=self.data_root,
                images_index=project_root / layout.IMAGES_INDEX,
            )
            self.size = self.dataset.out_size
        self.masks = ViewMasks(project_root)

    def raw(self, index: int) -> Tensor:
        """uint8 (M, 3, S, S) views or (3, s, s) image as the model sees it (index in dataset)."""
        if not self.full_image:
            return self.dataset.raw_views(index)
        return self.dataset.raw_image(index)

    def perturbed(self, rgb: np.ndarray, test: TestSet, i: int) -> Tensor:
        """uint8 input of the perturbed image ``rgb`` of test row ``i``.

        Args:
            rgb: the perturbed H x W x 3 uint8 image.
            test: the evaluated test set (view boxes, masks and the crops fill mode).
            i: the row of the image in ``test``.

        Returns:
            (M, 3, S, S) views (ProtoMask; a repeated view repeats its original's pixels)
            or the (3, s, s) image (the full-image models).
        """
        if self.full_image:
            pixels = np.require(resize_square(rgb, self.size), requirements=["W"])  # own copy
            return torch.from_numpy(pixels).permute(2, 0, 1)
        rles = (
            self.masks.masks(test.crop_shards[i], int(test.image_ids[i])).rles
            if test.fill != "original"
            else ()
        )
        distinct = test.duplicate_of[i] < 0  # the first views (ViewPlan's order)
        views = cut_planned_views(
            rgb, test.boxes[i][distinct], test.mask_index[i][distinct], rles, self.size, test.fill
        )
        return torch.from_numpy(views[view_owners(test.duplicate_of[i])]).permute(0, 3, 1, 2)
