"""The reference's remaining metrics by hand: object box, IoU, OIRR, explanation boxes,
map / activation changes, PLC, local size, entropy (model.metrics.reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.metrics import Absent
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


def grid(rows: slice, cols: slice, h: int = 4, w: int = 4) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[rows, cols] = True
    return m


def test_box_mask_covers_the_boxed_pixels_and_is_none_without_a_box() -> None:
    m = box_mask((1.0, 0.0, 2.0, 3.0), 4, 5)
    assert m.shape == (4, 5) and m.sum() == 6 and m[0:3, 1:3].all()
    assert box_mask((3.0, 3.0, 9.0, 9.0), 4, 4).sum() == 1  # clipped to the image
    assert box_mask(None, 4, 4) is None and box_mask([np.nan] * 4, 4, 4) is None


def test_iou_by_hand_and_its_undefined_items() -> None:
    s = np.stack([grid(slice(0, 2), slice(0, 2)), np.zeros((4, 4), bool)])[None]
    g = grid(slice(0, 2), slice(1, 3))[None]
    value = mask_iou(s, g)  # |S and G| = 2, |S or G| = 6
    assert value[0, 0] == pytest.approx(100 * 2 / 6) and math.isnan(value[0, 1])
    assert math.isnan(mask_iou(s[:, :1], np.zeros((1, 4, 4), bool))[0, 0])
    assert mask_iou(s, None) == Absent("no ground-truth object segmentation")


def test_oirr_by_hand_all_inside_and_nothing_inside() -> None:
    sal = np.zeros((1, 1, 4, 4))
    sal[0, 0, 0, 0], sal[0, 0, 0, 1], sal[0, 0, 3, 3] = 4.0, 2.0, 1.5
    S = sal > 0
    g = grid(slice(0, 1), slice(0, 2))[None]  # inside mean 3, outside mean 1.5
    assert oirr(sal, g, S)[0, 0] == pytest.approx(0.5)
    assert oirr(sal, grid(slice(0, 4), slice(0, 4))[None], S)[0, 0] == 0.0
    assert math.isnan(oirr(sal, grid(slice(2, 3), slice(0, 1))[None], S)[0, 0])
    assert isinstance(oirr(sal, None, S), Absent)


def test_bounding_box_fill_and_min_max_mask() -> None:
    s = np.zeros((2, 4, 4), bool)
    s[0, 0, 1] = s[0, 2, 3] = True
    box = bounding_box_fill(s)
    assert box[0].sum() == 9 and box[0, 0:3, 1:4].all() and not box[1].any()
    a = torch.tensor([[[0.0, 1.0], [0.6, 0.4]], [[2.0, 2.0], [2.0, 2.0]]])
    assert min_max_mask(a).tolist() == [[[False, True], [True, False]], [[False] * 2] * 2]


def test_mask_change_and_activation_change_by_hand() -> None:
    a = grid(slice(0, 2), slice(0, 2))
    b = grid(slice(0, 2), slice(1, 3))
    assert mask_change(a, b) == pytest.approx(100 * (1 - 2 / 6))
    assert mask_change(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 0.0
    x = torch.tensor([[[3.0, 0.0], [1.0, 0.0]]])
    y = torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])  # sorted: (3,1,0,0) vs (2,2,0,0)
    assert activation_change(x, y)[0] == pytest.approx(100 * (1 - 3 / 5))
    assert math.isnan(activation_change(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))[0])
    logits = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    cac = activation_change(logits, torch.tensor([[1.0, 2.0], [2.0, 0.0]]), dims=1)
    assert cac[0] == 0.0 and cac[1] == pytest.approx(100 * (1 - 1 / 3))


def test_location_change_uses_row_major_unravel_on_non_square_maps() -> None:
    a, b = torch.zeros(2, 3), torch.zeros(2, 3)
    a[0, 2], b[1, 0] = 1.0, 1.0  # (0, 2) -> (1, 0): 1 + 2
    assert location_change(a, b) == 3
    views = torch.tensor([[[0.1], [0.9], [0.3]]])  # ProtoMask: (M, 1), view 1
    assert location_change(views, torch.tensor([[[0.9], [0.1], [0.3]]]))[0] == 1


def test_intra_changes_by_hand_and_a_single_map() -> None:
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 0, 0, 0], maps[0, 1, 1, 1], maps[0, 2, 0, 1] = 1.0, 1.0, 1.0
    # distances 0-1: 2, 0-2: 1, 1-2: 1 -> mean over ordered pairs 8 / 6
    assert intra_location_change(maps)[0] == pytest.approx(8 / 6)
    assert intra_activation_change(maps)[0] == 0.0  # same value distribution
    r = torch.zeros(1, 2, 2, 2)
    r[0, 0, 0, 0], r[0, 1, 0, 0] = 2.0, 1.0
    assert intra_activation_change(r)[0] == pytest.approx(50.0)
    assert math.isnan(intra_location_change(maps[:, :1])[0])


def test_local_size_by_hand_and_an_all_zero_image() -> None:
    sim = torch.tensor([[1.0, 0.5, 0.08, 0.05], [0.0, 0.0, 0.0, 0.0]])
    value = local_size(sim)
    assert value[0] == 2.0 and math.isnan(value[1])


def test_entropy_by_hand_unused_and_reference_clamp() -> None:
    # prototype 0: levels 1.0 and 0.5 -> two bins, 1 bit; prototype 1 constant: 0 bits
    sim = torch.tensor([[1.0, 2.0, 0.0], [0.5, 2.0, 0.0]])
    h = activation_entropy(sim)
    assert h[0] == pytest.approx(1 / math.log2(10)) and h[1] == 0.0 and math.isnan(h[2])
    used = activation_entropy(sim, ids=torch.tensor([[1], [1]]))
    assert math.isnan(used[0]) and used[1] == 0.0
    spread = torch.tensor([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 1.0])[:, None]
    assert activation_entropy(spread)[0] == pytest.approx(1.0)
    assert activation_entropy(spread, reference_compatible=True)[0] == 1.0
