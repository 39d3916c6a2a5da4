"""PIP-Net's training pairs: two differently augmented views of the same image.

``TwoViewDataset(base)[i]`` -> (view_a 3 x S x S float32, view_b, label, image_id), both
ImageNet-normalised. ``base`` is a :class:`pipeline.view_datasets.FullImageDataset` built
without augmentation (or anything with ``raw_image(i)`` -> uint8 (3, H, W), ``labels``,
``image_ids`` and ``len``).

The augmentation is the original's (M-Nauta/PIPNet util/data.py), on uint8 tensors with
torchvision.transforms.v2 instead of PIL:

* shared by both views (shape): resize to (S + margin)^2, TrivialAugmentWide restricted to
  shape ops (identity, shear <= 0.5, translate <= 16 px, rotate <= 60 degrees), horizontal
  flip, RandomResizedCrop to S + crop_margin with scale (0.95, 1);
* per view (colour): TrivialAugmentWide restricted to colour ops (identity, brightness,
  contrast, sharpness <= 0.5, colour <= 0.02, posterize 8..2 bits, autocontrast, equalize;
  ``color="wide"``: colour <= 0.5 and solarize too, the original's Cars recipe), then a
  random S x S crop.

The original's margins: CUB margin 8 (32 for its pretraining pairs), crop_margin 4;
Cars margin 32, crop_margin 4, colour "wide"; Pets margin 48, crop_margin 8.

Seeding as pipeline.view_datasets: the draws of item ``i`` come from a torch generator
state seeded with ``item_seed(seed, epoch, i)`` inside ``torch.random.fork_rng`` (the
shared draw first, then view a, then view b), so each item depends only on
(seed, epoch, index). Call ``set_epoch(epoch)`` before each epoch.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from pipeline.view_datasets import item_seed, normalise


def _linear(top: float) -> Any:
    return lambda num_bins, height, width: torch.linspace(0.0, top, num_bins)


def _none(num_bins: int, height: int, width: int) -> None:
    return None


def _posterize_bits(num_bins: int, height: int, width: int) -> torch.Tensor:
    return (8 - (torch.arange(num_bins) / ((num_bins - 1) / 6))).round().int()


class ShapeTrivialAugment(v2.TrivialAugmentWide):
    """TrivialAugmentWide over the original's shape operations only."""

    _AUGMENTATION_SPACE = {
        "Identity": (_none, False),
        "ShearX": (_linear(0.5), True),
        "ShearY": (_linear(0.5), True),
        "TranslateX": (_linear(16.0), True),
        "TranslateY": (_linear(16.0), True),
        "Rotate": (_linear(60.0), True),
    }


class ColorTrivialAugment(v2.TrivialAugmentWide):
    """TrivialAugmentWide over the original's colour operations (colour <= 0.02)."""

    _AUGMENTATION_SPACE = {
        "Identity": (_none, False),
        "Brightness": (_linear(0.5), True),
        "Color": (_linear(0.02), True),
        "Contrast": (_linear(0.5), True),
        "Sharpness": (_linear(0.5), True),
        "Posterize": (_posterize_bits, False),
        "AutoContrast": (_none, False),
        "Equalize": (_none, False),
    }


class WideColorTrivialAugment(v2.TrivialAugmentWide):
    """The original's Cars colour operations: colour <= 0.5 and solarize as well."""

    _AUGMENTATION_SPACE = {
        **ColorTrivialAugment._AUGMENTATION_SPACE,
        "Color": (_linear(0.5), True),
        "Solarize": (lambda num_bins, height, width: torch.linspace(1.0, 0.0, num_bins), False),
    }


def pipnet_transforms(
    size: int, margin: int = 8, crop_margin: int = 4, color: str = "narrow"
) -> tuple[v2.Compose, v2.Compose]:
    """(shared, per_view) transforms of uint8 (3, H, W) tensors, as the original's."""
    if color not in ("narrow", "wide"):
        raise ValueError(f"color must be narrow or wide, got {color!r}")
    shared = v2.Compose(
        [
            v2.Resize((size + margin, size + margin), antialias=True),
            ShapeTrivialAugment(),
            v2.RandomHorizontalFlip(),
            v2.RandomResizedCrop(size + crop_margin, scale=(0.95, 1.0), antialias=True),
        ]
    )
    colour = ColorTrivialAugment() if color == "narrow" else WideColorTrivialAugment()
    return shared, v2.Compose([colour, v2.RandomCrop(size)])


class RawImages(Protocol):
    """What TwoViewDataset reads: uint8 images, labels, image ids."""

    labels: np.ndarray
    image_ids: np.ndarray

    def raw_image(self, index: int) -> torch.Tensor: ...

    def __len__(self) -> int: ...


class TwoViewDataset(Dataset):
    """(view_a, view_b, label, image_id): two augmented views of each image of ``base``.

    Args:
        base: the images (see the module docstring), not augmented itself.
        size: S, the views' side; None: ``base.out_size``.
        margin, crop_margin, color: see :func:`pipnet_transforms`.
        seed: seed of the draws (with the epoch and the index).
    """

    def __init__(
        self,
        base: RawImages,
        *,
        size: int | None = None,
        margin: int = 8,
        crop_margin: int = 4,
        color: str = "narrow",
        seed: int = 0,
    ) -> None:
        self.base = base
        self.size = int(size if size is not None else base.out_size)  # type: ignore[attr-defined]
        self.shared, self.per_view = pipnet_transforms(self.size, margin, crop_margin, color)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def views(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views as uint8 (3, S, S)."""
        image = self.base.raw_image(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, index))
            common = self.shared(image)
            return self.per_view(common), self.per_view(common)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        view_a, view_b = self.views(index)
        label, image_id = int(self.base.labels[index]), int(self.base.image_ids[index])
        return normalise(view_a), normalise(view_b), label, image_id
