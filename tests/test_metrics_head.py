"""Global size, sparsity and NPR on a weight matrix whose signs are counted by hand."""

from __future__ import annotations

import pytest
import torch

from model.metrics import Absent, global_size, npr, sparsity

# (classes, prototypes). positive (> 1e-3): 1.0, 0.002; negative (< -1e-3): -0.5, -0.002,
# -1.0; zero (|w| <= 1e-3): 0.0005, 0.0, -0.0009.
W = torch.tensor([[1.0, -0.5, 0.0005, 0.0], [-0.002, 0.002, -0.0009, -1.0]], dtype=torch.float64)


def test_global_size_counts_prototypes_with_a_positive_weight() -> None:
    assert global_size(W) == 2  # p0 (1.0) and p1 (0.002); p3 only negative


def test_sparsity() -> None:
    assert sparsity(W) == pytest.approx(100 * 3 / 8)
    assert sparsity(W.numpy()) == pytest.approx(37.5)


def test_npr() -> None:
    assert npr(W) == pytest.approx(3 / 2)
    assert isinstance(npr(-W.abs()), Absent)  # no positive weight: undefined
