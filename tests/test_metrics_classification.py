"""Class-balanced accuracy, top-k and macro F1 on confusion matrices worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.metrics import (
    Absent,
    abstained_share,
    balanced_accuracy,
    confusion_matrix,
    macro_f1,
    top_k_accuracy,
)

# true class 0: 4 samples (3 right, 1 called 1); class 1: 2 samples (1 right, 1 called 0)
Y_TRUE = np.array([0, 0, 0, 0, 1, 1])
Y_PRED = np.array([0, 0, 0, 1, 1, 0])


def test_confusion_matrix() -> None:
    assert confusion_matrix(Y_TRUE, Y_PRED).tolist() == [[3, 1], [1, 1]]


def test_balanced_accuracy_is_mean_recall() -> None:
    # recalls 3/4 and 1/2 (plain accuracy would be 4/6)
    assert balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx(62.5)
    assert balanced_accuracy(torch.tensor(Y_TRUE), torch.tensor(Y_PRED), 5) == pytest.approx(62.5)


def test_macro_f1_plain_and_balanced() -> None:
    # plain: F1_0 = 6/8, F1_1 = 2/4 -> 62.5
    assert macro_f1(Y_TRUE, Y_PRED, balanced=False) == pytest.approx(62.5)
    # rows / n_c: [[.75, .25], [.5, .5]]: F1_0 = 1.5/2.25 = 2/3, F1_1 = 1/1.75 = 4/7
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx(100 * (2 / 3 + 4 / 7) / 2)


def test_macro_f1_counts_a_label_only_predicted_as_zero() -> None:
    # class 2 never true but predicted once: F1_2 = 0; F1_0 = .75, F1_1 = 2/3
    y_pred = np.array([0, 0, 0, 2, 1, 0])
    assert macro_f1(Y_TRUE, y_pred, balanced=False) == pytest.approx(100 * (0.75 + 2 / 3) / 3)


def test_top3_with_a_tie_and_balancing() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.0, 0.0],  # true 0: best -> hit
            [0.4, 0.1, 0.3, 0.2],  # true 1: 3 classes higher -> miss
            [0.3, 0.3, 0.3, 0.1],  # true 2: tie, none strictly higher -> hit
            [0.5, 0.4, 0.3, 0.2],
        ]
    )  # true 3: 3 higher -> miss
    y = np.array([0, 1, 2, 3])
    assert top_k_accuracy(y, scores, k=3) == pytest.approx(50.0)
    assert top_k_accuracy(y, scores, k=4) == pytest.approx(100.0)
    y2 = np.array([0, 0, 0, 1])  # top-1 is always class 0: 3 hits, 1 miss
    scores2 = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], float)
    assert top_k_accuracy(y2, scores2, k=1, balanced=False) == pytest.approx(75.0)
    assert top_k_accuracy(y2, scores2, k=1) == pytest.approx(50.0)


def test_class_ids_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], num_classes=3)


def test_no_samples_is_absent() -> None:
    empty = np.zeros(0, int)
    assert isinstance(balanced_accuracy(empty, empty, 3), Absent)
    assert isinstance(macro_f1(empty, empty, 3), Absent)
    assert isinstance(top_k_accuracy(empty, np.zeros((0, 3))), Absent)


def test_abstained_share_counts_rows_with_every_class_tied() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.1, 0.0], [1.5, 1.5, 1.5], [0.0, 0.0, 1e-6]])
    assert abstained_share(logits) == pytest.approx(50.0)
    assert abstained_share(torch.zeros(3, 4)) == 100.0
    assert isinstance(abstained_share(torch.zeros(0, 4)), Absent)
