"""Class-balanced classification metrics (accuracy, top-3, macro F1, precision, recall, ROC
AUC, x100).

"Class-balanced" follows the reference, which weights every sample by 1 / (frequency of its
true class): each class present in ``y_true`` counts equally, however many test images it
has. Concretely:

* balanced accuracy = 100 * mean over classes c with n_c > 0 of recall_c (= TP_c / n_c);
* balanced top-k accuracy = 100 * mean over those classes of the share of their images
  whose true class is among the k best scores;
* macro F1 (balanced) = 100 * mean over the labels in ``y_true`` or ``y_pred`` of
  F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), with TP/FP/FN counted on the confusion matrix
  whose true-class rows are divided by n_c (the reference's sample weights; a constant
  factor N / C does not change F1). A label never true but predicted has F1 = 0. With
  ``balanced=False`` the raw counts are used (plain macro F1).

Inputs: ``y_true`` (N,) integer class ids in [0, C); ``y_pred`` (N,) integer ids; ``scores``
(N, C) float logits or probabilities. numpy or torch. No samples -> :class:`Absent`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from model.metrics.common import Absent, ArrayLike, MetricValue, as_tensor

NO_SAMPLES = "no test samples"


def _num_classes(*labels: Tensor, num_classes: Optional[int]) -> int:
    if num_classes is not None:
        return int(num_classes)
    return int(max(int(t.max()) for t in labels if t.numel())) + 1


def confusion_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: Optional[int] = None
) -> Tensor:
    """(C, C) int64 counts: entry [t, p] = number of samples of true class t predicted p.

    ``num_classes`` defaults to 1 + the largest id seen in either vector.
    """
    t = as_tensor(y_true, torch.long).reshape(-1)
    p = as_tensor(y_pred, torch.long, device=t.device).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true {tuple(t.shape)} and y_pred {tuple(p.shape)} differ")
    c = _num_classes(t, p, num_classes=num_classes) if t.numel() else int(num_classes or 0)
    if t.numel() and (min(int(t.min()), int(p.min())) < 0 or max(int(t.max()), int(p.max())) >= c):
        raise ValueError(f"class ids must lie in [0, {c})")
    return torch.bincount(t * c + p, minlength=c * c).reshape(c, c)


def balanced_accuracy(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: Optional[int] = None
) -> MetricValue:
    """100 * mean over classes present in ``y_true`` of recall. Range [0, 100]."""
    cm = confusion_matrix(y_true, y_pred, num_classes).double()
    n = cm.sum(1)
    present = n > 0
    if not bool(present.any()):
        return Absent(NO_SAMPLES)
    recall = cm.diagonal()[present] / n[present]
    return float(100.0 * recall.mean())


def top_k_hits(y_true: ArrayLike, scores: ArrayLike, k: int = 3) -> Tensor:
    """(N,) bool: the true class is among the k best scores.

    Ties are counted in the sample's favour: a hit when fewer than k classes score
    *strictly* higher than the true class (deterministic, no dependence on sort order).
    """
    s = as_tensor(scores)
    t = as_tensor(y_true, torch.long, device=s.device).reshape(-1)
    true_score = s.gather(1, t[:, None])
    return (s > true_score).sum(1) < k


def top_k_accuracy(
    y_true: ArrayLike, scores: ArrayLike, k: int = 3, balanced: bool = True
) -> MetricValue:
    """100 * (class-balanced) share of samples whose true class is in the top k. Range [0, 100].

    ``balanced``: mean over present classes of their hit rate (default); otherwise
    the plain share over samples.
    """
    s = as_tensor(scores)
    t = as_tensor(y_true, torch.long, device=s.device).reshape(-1)
    if t.numel() == 0:
        return Absent(NO_SAMPLES)
    hits = top_k_hits(t, s, k).double()
    if not balanced:
        return float(100.0 * hits.mean())
    c = max(int(t.max()) + 1, s.shape[1])
    n = torch.bincount(t, minlength=c).double()
    h = torch.zeros(c, dtype=torch.float64, device=t.device).index_add_(0, t, hits)
    present = n > 0
    return float(100.0 * (h[present] / n[present]).mean())


def _label_counts(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: Optional[int], balanced: bool
) -> Optional[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """(TP, FP, FN, labels) per class on the (balanced) confusion matrix; ``labels`` marks
    the classes in ``y_true`` or ``y_pred``. None without samples."""
    cm = confusion_matrix(y_true, y_pred, num_classes).double()
    n = cm.sum(1)
    if float(n.sum()) == 0:
        return None
    labels = (n > 0) | (cm.sum(0) > 0)
    if balanced:
        cm = cm / n.clamp(min=1)[:, None]
    tp = cm.diagonal()
    return tp, cm.sum(0) - tp, cm.sum(1) - tp, labels


def _macro(numerator: Tensor, denominator: Tensor, labels: Tensor) -> float:
    """100 * mean over ``labels`` of numerator / denominator (0 where the denominator is 0)."""
    ratio = torch.where(
        denominator > 0, numerator / denominator.clamp(min=1e-300), torch.zeros_like(numerator)
    )
    return float(100.0 * ratio[labels].mean())


def macro_f1(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: Optional[int] = None, balanced: bool = True
) -> MetricValue:
    """100 * macro-averaged F1 over the labels in y_true or y_pred (see module doc). [0, 100]."""
    counts = _label_counts(y_true, y_pred, num_classes, balanced)
    if counts is None:
        return Absent(NO_SAMPLES)
    tp, fp, fn, labels = counts
    return _macro(2 * tp, 2 * tp + fp + fn, labels)


def macro_precision(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: Optional[int] = None, balanced: bool = True
) -> MetricValue:
    """100 * mean over the labels in y_true or y_pred of TP_c / (TP_c + FP_c) (0 for a label
    never predicted), on the balanced confusion matrix as macro F1. [0, 100]."""
    counts = _label_counts(y_true, y_pred, num_classes, balanced)
    if counts is None:
        return Absent(NO_SAMPLES)
    tp, fp, _, labels = counts
    return _macro(tp, tp + fp, labels)


def macro_recall(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: Optional[int] = None, balanced: bool = True
) -> MetricValue:
    """100 * mean over the labels in y_true or y_pred of TP_c / (TP_c + FN_c) (0 for a label
    only predicted, so it can be below balanced accuracy). [0, 100]."""
    counts = _label_counts(y_true, y_pred, num_classes, balanced)
    if counts is None:
        return Absent(NO_SAMPLES)
    tp, _, fn, labels = counts
    return _macro(tp, tp + fn, labels)


def roc_auc(y_true: ArrayLike, scores: ArrayLike, balanced: bool = True) -> MetricValue:
    """100 * one-vs-rest ROC AUC of softmax(scores) (N, C), averaged over the classes.

    Per class c: the probability that a random image of c scores higher on c than a
    random image of another class (ties count 1/2), each image weighted by 1 / n_(its
    class) when ``balanced`` (the reference's sample weights). Absent unless every class
    has an image and some other class too.
    """
    y = as_tensor(y_true, torch.long).reshape(-1).cpu()
    z = as_tensor(scores, torch.double).cpu()
    if y.numel() == 0:
        return Absent(NO_SAMPLES)
    n = torch.bincount(y, minlength=z.shape[1]).double()
    if bool((n == 0).any()) or z.shape[1] < 2:
        return Absent("ROC AUC needs test images of every class")
    prob = z.softmax(dim=1)
    weight = 1.0 / n[y] if balanced else torch.ones_like(y, dtype=torch.double)
    aucs = []
    for c in range(z.shape[1]):
        pos = y == c
        s_pos, s_neg = prob[pos, c], prob[~pos, c]
        w_pos, w_neg = weight[pos], weight[~pos]
        order = torch.argsort(s_neg)
        s_neg, cum = s_neg[order], torch.cumsum(w_neg[order], 0)
        cum = torch.cat([torch.zeros(1, dtype=torch.double), cum])
        below = cum[torch.searchsorted(s_neg, s_pos, right=False)]
        not_above = cum[torch.searchsorted(s_neg, s_pos, right=True)]
        wins = (w_pos * (below + not_above) / 2).sum()
        aucs.append(wins / (w_pos.sum() * w_neg.sum()))
    return float(100.0 * torch.stack(aucs).mean())


def abstained_share(logits: ArrayLike) -> MetricValue:
    """100 * share of samples whose scores are all equal (N, C): the model prefers no class
    and the argmax is an arbitrary pick (PIP-Net's abstention: no prototype present above
    its cut-off, every logit 0). [0, 100]; Absent without samples."""
    z = torch.as_tensor(logits)
    if z.shape[0] == 0:
        return Absent(NO_SAMPLES)
    tied = z.amax(dim=1) == z.amin(dim=1)
    return float(100.0 * tied.double().mean())
