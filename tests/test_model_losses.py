"""Loss terms on hand-worked cases, the diversity gradient, and the weighted total."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.head import ProtoOutput, PrototypeHead
from model.losses import (
    LossWeights,
    class_weights,
    cluster_cost,
    cross_entropy,
    diversity_loss,
    l1_wrong_class,
    prototype_loss,
    separation_cost,
)

torch.set_num_threads(1)


def test_class_weights_are_n_over_c_times_count() -> None:
    w = class_weights([0, 0, 0, 1], 2)
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0]))
    w3 = class_weights(torch.tensor([0, 2, 2, 2]), 3)  # class 1 absent: weight 0
    assert torch.allclose(w3, torch.tensor([4 / 3, 0.0, 4 / 9]))
    with pytest.raises(ValueError):
        class_weights([0, 5], 3)


def test_weighted_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 2.0])
    nll = -F.log_softmax(logits, 1)[torch.arange(3), labels]
    expected = (0.5 * nll[0] + 2 * nll[1] + 2 * nll[2]) / (0.5 + 2 + 2)
    assert torch.allclose(cross_entropy(logits, labels, w), expected)
    assert torch.allclose(cross_entropy(logits, labels), nll.mean())


def test_cluster_and_separation_by_hand() -> None:
    head = PrototypeHead(2, 2, 3)  # prototypes 0, 1 -> class 0; 2, 3 -> class 1
    d = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.5, 7.0]])
    labels = torch.tensor([0, 1])
    assert cluster_cost(d, labels, head).item() == pytest.approx((1 + 0.5) / 2)
    assert separation_cost(d, labels, head).item() == pytest.approx((3 + 5) / 2)


def test_cluster_gradient_goes_to_the_closest_own_prototype_only() -> None:
    head = PrototypeHead(2, 2, 3)
    d = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    cluster_cost(d, torch.tensor([0]), head).backward()
    assert torch.equal(d.grad, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_diversity_by_hand() -> None:
    head = PrototypeHead(2, 2, 2)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0]]))
    # class 0: one pair at distance 5, summed over both orders: 10; class 1: coinciding: 0
    value = diversity_loss(torch.tensor([0, 1, 1]), head)
    assert value.item() == pytest.approx((math.exp(-0.01) + 1 + 1) / 3, rel=1e-6)


def test_diversity_has_a_gradient_that_moves_prototypes_apart() -> None:
    torch.manual_seed(0)
    head = PrototypeHead(3, 4, 16, seed=0)
    with torch.no_grad():  # class 1's prototypes collapsed, as two pushed onto one view
        head.prototypes[5] = head.prototypes[4]
    before = head.prototypes.detach().clone()
    labels = torch.tensor([0, 1, 1])
    loss = diversity_loss(labels, head)
    assert loss.requires_grad
    opt = torch.optim.SGD([head.prototypes], lr=10.0)
    opt.zero_grad()
    loss.backward()
    assert torch.isfinite(head.prototypes.grad).all()
    opt.step()
    moved = (head.prototypes.detach() - before).abs().sum(1)
    assert (moved[:8] > 0).all()  # classes 0 and 1 (in the batch) changed
    assert (moved[8:] == 0).all()  # class 2 (not in the batch) untouched
    assert diversity_loss(labels, head).item() < loss.item()


def test_l1_on_wrong_class_weights() -> None:
    head = PrototypeHead(3, 2, 4)  # 6 prototypes, each with 2 wrong classes at -0.5
    assert l1_wrong_class(head).item() == pytest.approx(6 * 2 * 0.5)
    head.set_last_layer(0.0)
    assert l1_wrong_class(head).item() == 0.0
    with torch.no_grad():
        head.last_layer.weight[0, 0] = 7.0  # own class: not penalised
        head.last_layer.weight[1, 0] = -0.25
    assert l1_wrong_class(head).item() == pytest.approx(0.25)


def test_prototype_loss_combines_the_parts() -> None:
    torch.manual_seed(0)
    head = PrototypeHead(3, 2, 4)
    d = torch.rand(4, 6) * 3
    labels = torch.tensor([0, 1, 2, 1])
    out = ProtoOutput(head.classify(d), d, torch.zeros(4, 6, dtype=torch.long), d[..., None])
    cw = class_weights([0, 1, 1, 2], 3)
    weights = LossWeights()
    assert weights == LossWeights(1.0, 0.8, 0.2, 0.2, 1e-3)
    total, parts = prototype_loss(out, labels, head, weights, cw)
    assert all(isinstance(v, float) for v in parts.values())
    assert set(parts) == {"total", "cross_entropy", "cluster", "separation", "diversity", "l1"}
    expected = (
        parts["cross_entropy"]
        + 0.8 * parts["cluster"]
        - 0.2 * parts["separation"]
        + 0.2 * parts["diversity"]
        + 1e-3 * parts["l1"]
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["total"] == pytest.approx(total.item())
    last = weights.for_period("last_layer")
    assert (last.cluster, last.separation, last.diversity, last.l1) == (0, 0, 0, 1e-3)
    assert weights.for_period("joint").l1 == 0
    total_last, parts_last = prototype_loss(out, labels, head, last, cw)
    assert total_last.item() == pytest.approx(
        parts_last["cross_entropy"] + 1e-3 * parts_last["l1"], rel=1e-5
    )
