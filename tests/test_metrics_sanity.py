"""Similarities of the model-randomisation check and its verdict, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.metrics import Absent, average_ranks, randomisation_verdict, spearman, top_mask_iou


def test_average_ranks_share_ties() -> None:
    assert average_ranks(torch.tensor([[3.0, 1.0, 2.0, 1.0]])).tolist() == [[3.0, 0.5, 2.0, 0.5]]


def test_spearman_by_hand() -> None:
    a = np.arange(1.0, 17.0).reshape(1, 4, 4)
    assert spearman(a, a**3)[0] == pytest.approx(1.0)  # monotone: same ranks
    assert spearman(a, -a)[0] == pytest.approx(-1.0)
    assert spearman(a, -a, absolute=True)[0] == pytest.approx(1.0)
    # ties: ranks (0, 1.5, 1.5, 3) vs (0, 1, 2, 3): 4.5 / sqrt(4.5 * 5)
    x = np.array([[1.0, 2.0, 2.0, 3.0]])
    y = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert spearman(x, y)[0] == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman(np.ones((1, 2, 2)), a[:, :2, :2])[0])


def test_top_mask_iou() -> None:
    maps = np.random.default_rng(1).random((2, 10, 10)) + 0.1
    assert top_mask_iou(maps, 5 * maps).tolist() == [1.0, 1.0]
    b = np.zeros((1, 10, 10))
    b[0, 0, :5] = 1.0  # top 5 % = 5 pixels
    c = np.zeros((1, 10, 10))
    c[0, 0, 3:8] = 1.0  # overlap 2, union 8
    assert top_mask_iou(b, c)[0] == pytest.approx(2 / 8)


def test_randomisation_verdict() -> None:
    assert randomisation_verdict([0.9, 0.8])["passed"] is False
    v = randomisation_verdict(np.array([0.1, np.nan, 0.2]), threshold=0.5)
    assert v["passed"] is True and v["pairs"] == 2 and v["mean_similarity"] == pytest.approx(0.15)
    none = randomisation_verdict([np.nan])
    assert none["passed"] is None and isinstance(none["mean_similarity"], Absent)
