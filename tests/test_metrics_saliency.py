"""S / R binarisation, object and background overlap, IOR, pointing game and VLC by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.metrics import (
    Absent,
    background_overlap,
    ior,
    mean_of,
    object_overlap,
    pointing_energy,
    pointing_hit,
    restrict,
    top_fraction_mask,
    vlc,
)

H = W = 20  # 400 pixels: top 5 % = 20 pixels


def region(rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[rows, cols] = True
    return m


G = region(slice(0, 4), slice(0, 10))  # 40 object pixels


def test_top5_counts_and_scale_invariance() -> None:
    rng = np.random.default_rng(0)
    sal = rng.random((3, 6, 10)) + 0.1  # 60 distinct positive pixels: k = 3
    s = top_fraction_mask(sal)
    assert s.shape == (3, 6, 10) and s.dtype == torch.bool
    assert s.reshape(3, -1).sum(1).tolist() == [3, 3, 3]
    for scale in (3.7, 1e-6, 1e4):
        assert torch.equal(top_fraction_mask(sal * scale), s)
    assert torch.equal(top_fraction_mask(torch.tensor(sal, dtype=torch.float32)), s)


def test_top5_ties_positive_only_and_small_boxes() -> None:
    assert bool(top_fraction_mask(np.ones((H, W))).all())  # all tied: all in
    assert not bool(top_fraction_mask(np.zeros((H, W))).any())  # nothing positive
    box = np.zeros((H, W))
    box[5:7, 5:7] = 1.0  # a 4-pixel pasted view, 1 % of the canvas
    s = top_fraction_mask(box)
    assert s.sum() == 4 and bool(s[5:7, 5:7].all())
    assert top_fraction_mask(box, positive_only=False).sum() == H * W  # the zero canvas ties
    r = restrict(box * 3, s)
    assert float(r.sum()) == 12.0


def test_saliency_exactly_on_the_object() -> None:
    sal = np.where(G, 1.0, 0.0)
    s = top_fraction_mask(sal)  # 40 tied pixels >= the 20th largest (1.0)
    assert np.array_equal(s.numpy(), G)
    assert object_overlap(s, G).item() == 100.0
    assert background_overlap(s, G).item() == 0.0
    assert ior(sal, G).item() == 1.0
    assert pointing_energy(sal, G).item() == 100.0
    assert pointing_hit(sal, G).item() == 100.0


def test_saliency_entirely_on_the_background() -> None:
    sal = np.where(region(slice(10, 12), slice(0, 10)), 2.0, 0.0)  # 20 pixels off G
    s = top_fraction_mask(sal)
    assert object_overlap(s, G).item() == 0.0
    assert background_overlap(s, G).item() == 100.0
    assert ior(sal, G).item() == -1.0
    assert pointing_energy(sal, G).item() == 0.0
    assert pointing_hit(sal, G).item() == 0.0


def test_half_on_half_off_worked_by_hand() -> None:
    inside = region(slice(3, 4), slice(0, 10))  # 10 pixels in G (row 3)
    outside = region(slice(4, 5), slice(0, 10))  # 10 pixels below it
    sal = 4.0 * inside + 2.0 * outside + 0.01 * region(slice(8, 20), slice(0, 20))
    s = top_fraction_mask(sal)
    assert np.array_equal(s.numpy(), inside | outside)
    assert object_overlap(s, G).item() == pytest.approx(100 * 10 / 40)
    assert background_overlap(s, G).item() == pytest.approx(50.0)
    assert ior(sal, G).item() == pytest.approx(1.0 - 0.5)  # r = 1 inside, 0.5 outside
    total = 40 + 20 + 0.01 * 240
    assert pointing_energy(sal, G).item() == pytest.approx(100 * 40 / total)


def test_batched_shapes_and_undefined_items() -> None:
    sal = np.zeros((2, 3, H, W))
    sal[0, :] = np.where(G, 1.0, 0.0)
    sal[1, 0] = np.where(G, 1.0, 0.0)  # image 1: prototypes 1, 2 have no saliency
    g = np.stack([G, np.zeros((H, W), bool)])  # image 1 has an empty object mask
    s = top_fraction_mask(sal)
    oo, bo = object_overlap(s, g), background_overlap(s, g)
    assert oo.shape == (2, 3) and oo.dtype == np.float64
    assert oo[0].tolist() == [100.0] * 3 and np.isnan(oo[1]).all()
    assert bo[0].tolist() == [0.0] * 3 and np.isnan(bo[1]).all()
    assert np.isnan(ior(sal, g)[1]).all()
    g2 = np.stack([G, G])
    bo2 = background_overlap(s, g2)
    assert bo2[1, 0] == 0.0 and np.isnan(bo2[1, 1:]).all()  # empty S: undefined
    oo2 = object_overlap(s, g2)
    assert oo2[1, 0] == 100.0 and np.isnan(oo2[1, 1:]).all()
    assert mean_of(bo2) == 0.0


def test_absent_ground_truth_gives_absent_not_zero() -> None:
    s = top_fraction_mask(np.ones((2, H, W)))
    for fn in (object_overlap, background_overlap, ior, pointing_energy, pointing_hit):
        value = fn(s.float(), None)
        assert isinstance(value, Absent) and value.reason
        assert isinstance(mean_of([value]), Absent)


def test_vlc_identical_disjoint_and_by_hand() -> None:
    same = np.broadcast_to(G, (1, 5, H, W))
    assert vlc(same).tolist() == [0.0]
    disjoint = np.zeros((1, 5, H, W), bool)
    for i in range(5):
        disjoint[0, i, i] = True  # row i only
    assert vlc(disjoint).tolist() == [100.0]
    two = np.zeros((1, 2, 1, 3), bool)
    two[0, 0, 0, :2] = True  # {0, 1}
    two[0, 1, 0, 1:] = True  # {1, 2}: IoU 1/3
    assert vlc(two)[0] == pytest.approx(100 * 2 / 3)
    three = np.zeros((1, 3, 1, 4), bool)
    three[0, 0, 0, :2] = three[0, 1, 0, :2] = True  # S1 = S2
    three[0, 2, 0, 2:] = True  # S3 disjoint: (0 + 1 + 1) * 2 / 6
    assert vlc(torch.tensor(three))[0] == pytest.approx(100 * 4 / 6)
    assert math.isnan(vlc(np.ones((1, 1, 2, 2), bool))[0])
