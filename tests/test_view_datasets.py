"""Torch datasets over the crop shards: values, augmentation, seeding, DataLoader workers."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from pipeline import layout
from pipeline.crop_shards import CropShard
from pipeline.imageio import load_rgb
from pipeline.params import AugmentParams
from pipeline.tables import read_table
from pipeline.view_datasets import FullImageDataset, ViewDataset, item_seed, normalise
from pipeline.views import resize_square

NO_AUGMENT = AugmentParams(
    flip=0.0,
    perspective=0.0,
    rotate=0.0,
    shear=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    hue=0.0,
)


@pytest.fixture(scope="module")
def crops_dir(cropped_project: Path) -> Path:
    return cropped_project / layout.CROPS_DIR


def test_views_are_the_stored_crops_normalised(crops_dir) -> None:
    dataset = ViewDataset(crops_dir, "train")
    index = read_table(crops_dir / "crops.parquet", "crops")[0].to_pandas()
    train = index[index.split == "train"]
    assert len(dataset) == train.image_id.nunique() > 0
    for k in (0, len(dataset) - 1):
        views, label, image_id = dataset[k]
        rows = train[train.image_id == image_id].sort_values("view")
        assert views.shape == (6, 3, 16, 16) and views.dtype == torch.float32
        assert label == rows.class_id.iloc[0] and isinstance(label, int)
        with CropShard(crops_dir / rows.shard.iloc[0]) as shard:
            stored = torch.from_numpy(shard.rows(rows.row.to_numpy())).permute(0, 3, 1, 2)
        assert torch.allclose(views, normalise(stored))
        assert torch.allclose(
            views * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
            + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
            stored.float() / 255,
            atol=1e-6,
        )
    assert set(ViewDataset(crops_dir, "test").image_ids) == set(
        index[index.split == "test"].image_id
    )


def test_augmentation_depends_only_on_seed_epoch_and_index(crops_dir) -> None:
    dataset = ViewDataset(crops_dir, "train", augment=AugmentParams(), seed=3)
    first = dataset[1][0]
    torch.manual_seed(123)  # the global stream plays no part
    assert torch.equal(dataset[1][0], first)
    assert not torch.equal(dataset[2][0], ViewDataset(crops_dir, "train")[2][0])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1][0], first)
    assert not torch.equal(
        ViewDataset(crops_dir, "train", augment=AugmentParams(), seed=4)[1][0], first
    )
    assert item_seed(3, 0, 1) != item_seed(3, 1, 0) != item_seed(3, 0, 2)


def flip_states(dataset: ViewDataset, index: int) -> set[bool]:
    """Whether each view came out mirrored (flip is the only random step enabled);
    mirror-symmetric views tell nothing and are skipped."""
    raw = normalise(dataset.raw_views(index))
    views = dataset[index][0]
    states = set()
    for v in range(len(views)):
        mirror = raw[v].flip(-1)
        if torch.equal(raw[v], mirror):
            continue
        assert torch.equal(views[v], raw[v]) or torch.equal(views[v], mirror)
        states.add(torch.equal(views[v], mirror))
    return states


def test_one_draw_per_image_or_per_view(crops_dir) -> None:
    coin = replace(NO_AUGMENT, flip=0.5)
    per_image = ViewDataset(crops_dir, "train", augment=coin)
    per_view = ViewDataset(crops_dir, "train", augment=replace(coin, per="view"))
    always = ViewDataset(crops_dir, "train", augment=replace(NO_AUGMENT, flip=1.0))
    image_draws = [flip_states(per_image, k) for k in range(len(per_image))]
    assert all(len(d) == 1 for d in image_draws) and {True, False} == set().union(
        *(d for d in image_draws)
    )
    assert any(len(flip_states(per_view, k)) == 2 for k in range(len(per_view)))
    assert all(flip_states(always, k) == {True} for k in range(len(always)))


def test_pickles_without_open_files(crops_dir) -> None:
    dataset = ViewDataset(crops_dir, "train", augment=AugmentParams())
    expected = dataset[0][0]  # opens a shard in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[0][0], expected)


# Two forked workers (each its own share of the batches); one spawned worker: a fresh
# interpreter that gets the dataset pickled (epoch included), its torch seed not the
# parent's, at the cost of one interpreter and torch start-up, not two.
@pytest.mark.parametrize(("context", "workers"), [("fork", 2), ("spawn", 1)], ids=["fork", "spawn"])
def test_dataloader_workers_give_the_same_items(crops_dir, context, workers) -> None:
    dataset = ViewDataset(crops_dir, "train", augment=AugmentParams(), seed=7)
    dataset.set_epoch(2)
    expected = [dataset[k] for k in range(len(dataset))]  # handles open before the fork
    loader = DataLoader(dataset, batch_size=4, num_workers=workers, multiprocessing_context=context)
    views, labels, ids = (torch.cat(parts) for parts in zip(*loader, strict=False))
    assert torch.equal(views, torch.stack([e[0] for e in expected]))
    assert labels.tolist() == [e[1] for e in expected]
    assert ids.tolist() == [e[2] for e in expected]


def test_full_images_stored_or_decoded_at_another_size(crops_dir) -> None:
    project = crops_dir.parent.parent
    images = read_table(project / layout.IMAGES_INDEX, "images")[0].to_pandas()
    stored = FullImageDataset(crops_dir, "val")
    image, label, image_id = stored[0]
    row = images.set_index("image_id").loc[image_id]
    pixels = load_rgb(project / "data/synthetic" / row.path)
    assert image.shape == (3, 16, 16) and label == row.class_id
    expected = torch.from_numpy(resize_square(pixels, 16)).permute(2, 0, 1)
    assert torch.allclose(image, normalise(expected))
    bigger = FullImageDataset(crops_dir, "val", size=40, data_root=project / "data/synthetic")
    image40 = bigger[0][0]
    assert image40.shape == (3, 40, 40)
    assert torch.allclose(
        image40, normalise(torch.from_numpy(resize_square(pixels, 40)).permute(2, 0, 1))
    )
    with pytest.raises(ValueError, match="give data_root"):
        FullImageDataset(crops_dir, "val", size=40)


def test_full_images_at_their_own_size_are_writable_copies(crops_dir, monkeypatch) -> None:
    """The baseline's default size is the images' own: the decoded image comes back
    unresized, and a decoder may return it read-only; torch must get a writable copy
    (never the decoder's buffer: augmentation writes in place)."""
    import pipeline.view_datasets as view_datasets

    project = crops_dir.parent.parent
    decoded = []

    def read_only_rgb(path):
        pixels = load_rgb(path)
        pixels.flags.writeable = False
        decoded.append(pixels)
        return pixels

    monkeypatch.setattr(view_datasets, "load_rgb", read_only_rgb)
    probe = FullImageDataset(crops_dir, "val", size=17, data_root=project / "data/synthetic")
    probe.raw_image(0)
    side = decoded[0].shape[0]
    dataset = FullImageDataset(crops_dir, "val", size=side, data_root=project / "data/synthetic")
    raw = dataset.raw_image(0)
    assert raw.shape == (3, side, side)
    assert torch.equal(raw, torch.from_numpy(decoded[-1].copy()).permute(2, 0, 1))
    assert raw.data_ptr() != decoded[-1].ctypes.data
