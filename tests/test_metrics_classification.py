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
    macro_precision,
    macro_recall,
    roc_auc,
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


def test_macro_precision_and_recall_plain_and_balanced() -> None:
    # plain: precision 3/4, 1/2; recall 3/4, 1/2
    assert macro_precision(Y_TRUE, Y_PRED, balanced=False) == pytest.approx(62.5)
    assert macro_recall(Y_TRUE, Y_PRED, balanced=False) == pytest.approx(62.5)
    # balanced rows [[.75, .25], [.5, .5]]: precision .75 / 1.25 and .5 / .75
    assert macro_precision(Y_TRUE, Y_PRED) == pytest.approx(100 * (0.6 + 2 / 3) / 2)
    assert macro_recall(Y_TRUE, Y_PRED) == pytest.approx(62.5)
    # a label only predicted: recall 0 for it, precision 0 for it
    only = (np.array([0, 0]), np.array([0, 1]))
    assert macro_recall(*only, 2) == pytest.approx(25.0)
    assert macro_precision(*only, 2) == pytest.approx(50.0)
    empty = np.zeros(0, dtype=int)
    assert isinstance(macro_precision(empty, empty, 3), Absent)


def test_roc_auc_by_hand_ties_and_missing_classes() -> None:
    # p0 = sigmoid(2, 0, 1, -1) = .88 .50 .73 .27; class 0 wins 3 of its 4 pairs, class 1 too
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert roc_auc(np.array([0, 0, 1, 1]), logits) == pytest.approx(75.0)
    assert roc_auc(np.array([0, 0, 1, 1]), torch.zeros(4, 2)) == pytest.approx(50.0)  # ties
    assert isinstance(roc_auc(np.array([0, 0, 0]), torch.zeros(3, 2)), Absent)


def test_roc_auc_weights_each_class_equally() -> None:
    """Against the pairwise definition with weights 1 / n_class, on unequal classes."""
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2])
    z = torch.randn(10, 3, generator=gen).round(decimals=1)  # some ties
    p = z.double().softmax(1)
    w = 1.0 / torch.bincount(y).double()[y]
    expected = []
    for c in range(3):
        num = den = 0.0
        for i in range(10):
            for j in range(10):
                if y[i] == c and y[j] != c:
                    wins = 1.0 if p[i, c] > p[j, c] else 0.5 if p[i, c] == p[j, c] else 0.0
                    num, den = num + w[i] * w[j] * wins, den + w[i] * w[j]
        expected.append(num / den)
    assert roc_auc(y, z) == pytest.approx(100 * sum(expected) / 3)
    assert roc_auc(y, z) != pytest.approx(roc_auc(y, z, balanced=False))
