"""Part-set codes and mask consistency by hand."""

from __future__ import annotations

import numpy as np
import pytest

from model.metrics import Absent, mask_consistency, mask_part_codes


def test_mask_part_codes() -> None:
    masks = np.zeros((3, 5, 5), bool)
    masks[0] = True  # every part
    masks[1, :3, :3] = True  # part 0 only
    masks[2, 4, 0] = True  # only the hidden part's pixel
    xy = np.array([[1.0, 1.0], [3.0, 3.0], [0.0, 4.0]])  # (x, y)
    vis = np.array([True, True, False])
    assert mask_part_codes(masks, xy, vis).tolist() == [0b011, 0b001, 0]
    assert mask_part_codes(np.zeros((0, 5, 5), bool), xy, vis).tolist() == []


def test_mask_consistency_by_hand() -> None:
    codes = [np.array([3, 1, 0]), np.array([3, 0, 0]), np.array([2])]
    labels = [0, 0, 1]
    # class 0 (2 images): code 0 in 2, code 1 in 1, code 3 in 2 -> (1 + 1/2 + 1) / 3 = 5/6;
    # class 1: code 2 in its only image -> 1. Mean 11/12.
    assert mask_consistency(codes, labels) == pytest.approx(100 * (5 / 6 + 1) / 2)
    # without code 0: class 0 -> (1/2 + 1) / 2 = 3/4
    assert mask_consistency(codes, labels, include_empty_code=False) == pytest.approx(87.5)
    # a class whose image has no mask scores 0
    assert mask_consistency(codes + [np.array([], int)], labels + [2]) == pytest.approx(
        100 * (5 / 6 + 1 + 0) / 3
    )
    assert isinstance(mask_consistency(None, labels), Absent)
