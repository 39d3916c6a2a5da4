"""Torch datasets over the crop shards: the M views of an image, or the whole image.

- ``ViewDataset(crops_dir, split)[i]`` -> (views M x 3 x S x S float32, label, image_id).
- ``FullImageDataset(crops_dir, split)[i]`` -> (image 3 x S x S float32, label, image_id),
  the input of the full-image baseline (ProtoPNet). At the crops size it reads the
  ``full`` images that the crops stage stored in each crop shard; at any other ``size``
  it decodes the image file and resizes it (give ``data_root``).

Both are ImageNet-normalised and read HDF5 lazily through :class:`CropShard`: a dataset
holds no open file when it is pickled (DataLoader workers under spawn) and reopens its
files in any new process (workers under fork), once per process. A damaged shard (a chunk
failing its checksum) ends in one ArtifactError naming the file and the fix, never in
damaged pixels.

Augmentation (``augment``: AugmentParams; None for push and evaluation) applies flip,
perspective, affine (rotation, shear) and colour jitter from torchvision.transforms.v2,
either with one random draw shared by all views of an image (``augment.per: image``) or
one draw per view (``per: view``).

Seeding: the random draws for item ``i`` come from a torch generator state seeded with
``SeedSequence([seed, epoch, i])``, set inside ``torch.random.fork_rng`` so the global
stream is untouched. Each item's augmentation therefore depends only on (seed, epoch,
index): DataLoader workers get distinct streams (distinct indices) that are reproducible
whatever the number of workers, the start method or the batch order. Call
``set_epoch(epoch)`` before each epoch (before the DataLoader iterator is created: with
``persistent_workers=True`` the workers keep the epoch they were started with).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from pipeline import layout
from pipeline.crop_shards import CropShard
from pipeline.errors import ArtifactError
from pipeline.imageio import load_rgb, resolve_inside
from pipeline.params import AugmentParams
from pipeline.tables import SPLITS, read_table
from pipeline.views import resize_square

# Crop shards one process keeps open (a split in order touches one shard at a time; a
# shuffled epoch hops between them: 16 keeps re-opening rare at small cost).
MAX_OPEN_SHARDS = 16

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_augmentation(params: AugmentParams) -> v2.Compose:
    """The training transform of the method on uint8 (..., 3, H, W) tensors."""
    steps: list[Any] = [v2.RandomHorizontalFlip(p=params.flip)]
    if params.perspective > 0 and params.perspective_p > 0:
        steps.append(
            v2.RandomPerspective(distortion_scale=params.perspective, p=params.perspective_p)
        )
    if params.rotate > 0 or params.shear > 0:
        steps.append(
            v2.RandomAffine(
                degrees=params.rotate, shear=(-params.shear, params.shear) if params.shear else None
            )
        )
    if max(params.brightness, params.contrast, params.saturation, params.hue) > 0:
        steps.append(
            v2.ColorJitter(
                brightness=params.brightness,
                contrast=params.contrast,
                saturation=params.saturation,
                hue=params.hue,
            )
        )
    return v2.Compose(steps)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32, scaled to [0, 1] and ImageNet-normalised."""
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    scale = 1.0 / (255.0 * std)
    shift = -torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1) / std
    # one strided uint8 -> float32 copy into a contiguous tensor, then two in-place ops:
    # half the time of contiguous() + to() on (M, 3, 224, 224) views permuted from HWC
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    out.copy_(images)
    return out.mul_(scale).add_(shift)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's random draws: a function of (seed, epoch, index) only."""
    low, high = np.random.SeedSequence([seed, epoch, index]).generate_state(2)
    return int(low) | (int(high) & 0x7FFFFFFF) << 32


class ShardFiles:
    """The crop shards of one folder, opened on first use, at most ``max_open`` at a time
    per process (the least recently used one is closed first), so open files and memory
    stay bounded however many shards a split spans."""

    def __init__(self, directory: Path, max_open: int = MAX_OPEN_SHARDS) -> None:
        self.directory = Path(directory)
        self.max_open = max_open
        self._files: OrderedDict[str, CropShard] = OrderedDict()
        self._pid = os.getpid()

    def __call__(self, name: str) -> CropShard:
        if self._pid != os.getpid():  # a forked worker: never share the parent's handles
            self._files, self._pid = OrderedDict(), os.getpid()
        shard = self._files.pop(name, None)
        if shard is None:
            while len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
            shard = CropShard(self.directory / name)
        self._files[name] = shard
        return shard

    @property
    def open_count(self) -> int:
        """Shards this process holds open now."""
        return len(self._files) if self._pid == os.getpid() else 0

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"], state.get("max_open", MAX_OPEN_SHARDS))


class _CropsDataset(Dataset):
    """What both datasets share: the crops index of one split, files, augmentation."""

    def __init__(
        self, crops_dir: Path, split: str, augment: AugmentParams | None, seed: int
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        crops_dir = Path(crops_dir)
        index = crops_dir / layout.CROPS_INDEX.name
        # only this split's rows and the columns an item needs, as compact arrays
        table, info = read_table(
            index,
            "crops",
            columns=["image_id", "view", "class_id", "shard", "row", "image_row"],
            filters=[("split", "==", split)],
        )
        table = table.sort_by([("image_id", "ascending"), ("view", "ascending")])
        self.num_views = m = int(info["facts"]["num_views"])
        self.size = int(info["facts"]["size"])
        views = table["view"].to_numpy()
        if len(views) % m or (views.reshape(-1, m) != np.arange(m)).any():
            raise ArtifactError(
                f"{index}: the {split} split does not have views 0..{m - 1} for every "
                f"image; rerun crops"
            )
        first = table.take(np.arange(0, len(table), m))  # each image's view 0
        self.image_ids = first["image_id"].to_numpy()
        self.labels = first["class_id"].to_numpy()
        self.image_rows = first["image_row"].to_numpy()
        # shard names once each (sorted), an int32 per image pointing at its shard
        shards = pc.dictionary_encode(first["shard"].combine_chunks())
        names = shards.dictionary.to_numpy(zero_copy_only=False).astype(str)
        order = np.argsort(names)
        rank = np.empty(len(order), np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        self.shard_names = names[order]
        self.shard_of = rank[shards.indices.to_numpy(zero_copy_only=False)]
        self.rows = table["row"].to_numpy().reshape(-1, m)
        del table, first, shards
        self.files = ShardFiles(crops_dir)
        self.augment = augment
        self.transform = build_augmentation(augment) if augment is not None else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (see the module docstring)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.image_ids)

    def _shard(self, index: int) -> CropShard:
        return self.files(str(self.shard_names[self.shard_of[index]]))

    def _augmented(self, images: torch.Tensor, index: int, per_view: bool) -> torch.Tensor:
        if self.transform is None:
            return images
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, index))
            if per_view:
                return torch.stack([self.transform(image) for image in images])
            return self.transform(images)


class ViewDataset(_CropsDataset):
    """(views M x 3 x S x S float32, label, image_id) for every image of one split."""

    def __init__(
        self, crops_dir: Path, split: str, *, augment: AugmentParams | None = None, seed: int = 0
    ) -> None:
        super().__init__(crops_dir, split, augment, seed)

    def raw_views(self, index: int) -> torch.Tensor:
        """The stored M views as uint8 (M, 3, S, S), duplicates included."""
        return torch.from_numpy(self._shard(index).rows(self.rows[index])).permute(0, 3, 1, 2)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        per_view = self.augment is not None and self.augment.per == "view"
        views = self._augmented(self.raw_views(index), index, per_view)
        return normalise(views), int(self.labels[index]), int(self.image_ids[index])


class FullImageDataset(_CropsDataset):
    """(image 3 x size x size float32, label, image_id) for every image of one split.

    ``size`` None (or the crops size) reads the stored ``full`` images; another size
    decodes the image file under ``data_root`` and resizes it (no aspect kept, as the reference).
    """

    def __init__(
        self,
        crops_dir: Path,
        split: str,
        *,
        size: int | None = None,
        data_root: Path | None = None,
        images_index: Path | None = None,
        augment: AugmentParams | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(crops_dir, split, augment, seed)
        self.out_size = size or self.size
        self.paths: pa.StringArray | None = None
        self.data_root = Path(data_root) if data_root is not None else None
        if self.out_size != self.size:
            if data_root is None:
                raise ValueError(
                    f"size {self.out_size} differs from the stored crops size "
                    f"{self.size}: give data_root to decode the images"
                )
            index_path = Path(images_index or Path(crops_dir).parent.parent / layout.IMAGES_INDEX)
            images, _ = read_table(
                index_path, "images", columns=["image_id", "path"], filters=[("split", "==", split)]
            )
            images = images.sort_by("image_id")
            ids = images["image_id"].to_numpy()
            at = np.minimum(np.searchsorted(ids, self.image_ids), max(len(ids) - 1, 0))
            missing = ids[at] != self.image_ids if len(ids) else np.ones(len(self), bool)
            if missing.any():
                raise ArtifactError(
                    f"{index_path}: image {int(self.image_ids[missing][0])} of the {split} "
                    f"crops is not in the {split} split of the images index; rerun crops"
                )
            # one Arrow string array (no Python object per image), picklable to workers
            self.paths = images["path"].combine_chunks().take(pa.array(at))

    def raw_image(self, index: int) -> torch.Tensor:
        """The whole image as uint8 (3, size, size)."""
        if self.paths is None:
            pixels = self._shard(index).image(int(self.image_rows[index]))
        else:
            image = load_rgb(resolve_inside(self.data_root, self.paths[index].as_py()))
            pixels = resize_square(image, self.out_size)
        # a decoded image at its own size comes back unresized and read-only: copy it
        pixels = np.require(pixels, dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE"])
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self._augmented(self.raw_image(index), index, per_view=False)
        return normalise(image), int(self.labels[index]), int(self.image_ids[index])
