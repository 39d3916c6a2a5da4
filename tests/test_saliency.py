"""Saliency of a prototype: the PRP similarity rule, PRP through a tiny network (zennit),
input x gradient, paste-back onto the image canvas, resizing, the randomised copy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.backbones import TinyCNN
from model.protomask import ProtoMask
from model.protopnet import ProtoPNet
from model.saliency import (
    PrototypeSimilarity,
    PRPSimilarity,
    log_similarity,
    paste_back,
    prototype_saliency,
    randomised_copy,
    resize_maps,
    upsampled_similarity,
)


def tiny_net(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    cls = ProtoMask if kind == "protomask" else ProtoPNet
    model = cls(TinyCNN(), 3, prototypes_per_class=2, prototype_dim=8).eval()
    return model, PrototypeSimilarity(model.trunk, model.add_on, pooled=kind == "protomask")


def test_prp_similarity_rule_by_hand() -> None:
    z = torch.tensor([[0.5, 0.1]], requires_grad=True)
    p = torch.tensor([[0.4, 0.3]])
    s = PRPSimilarity.apply(z, p, 1e-4)
    d = 0.01 + 0.04
    value = float(s.detach())
    assert value == pytest.approx(math.log((d + 1) / (d + 1e-4)), rel=1e-5)
    (r,) = torch.autograd.grad(s, z, grad_outputs=s.detach())
    # weights 1 / diff2^2: 1 / 1e-4 = 10000 and 1 / 1.6e-3 = 625 -> shares 16/17 and 1/17
    assert r[0, 0].item() == pytest.approx(value * 16 / 17, rel=1e-4)
    assert r[0, 1].item() == pytest.approx(value * 1 / 17, rel=1e-4)


@pytest.mark.parametrize("kind", ["protomask", "protopnet"])
def test_prp_is_finite_nontrivial_conserving_and_batch_independent(kind: str) -> None:
    model, explainer = tiny_net(kind)
    x = torch.randn(5, 3, 32, 32)
    protos = model.head.prototypes.detach()[:5]
    maps, sims = prototype_saliency(explainer, x, protos, method="prp")
    assert maps.shape == (5, 32, 32) and torch.isfinite(maps).all()
    assert (maps.abs().flatten(1).amax(1) > 0).all()
    # relevance starts as the similarity and is conserved (biases take none) down to pixels
    assert torch.allclose(maps.sum((1, 2)), sims, rtol=1e-2)
    with torch.no_grad():
        out = model(x[:, None] if kind == "protomask" else x)
    expected = model.head.similarity(out.min_distances)[torch.arange(5), torch.arange(5)]
    assert torch.allclose(sims, expected, rtol=1e-4)
    one, _ = prototype_saliency(explainer, x[2:3], protos[2:3], method="prp")
    assert torch.allclose(one[0], maps[2], atol=1e-6 * float(maps[2].abs().max()) + 1e-9)
    chunked, _ = prototype_saliency(explainer, x, protos, method="prp", batch_size=2)
    assert torch.allclose(chunked, maps, atol=1e-7)


def test_protopnet_relevance_enters_only_through_the_best_location() -> None:
    model, explainer = tiny_net("protopnet")
    x = torch.zeros(1, 3, 64, 64)
    x[0, :, 40:48, 8:16] = 3.0  # one bright patch
    proto = model.add_on(model.trunk(x))[0, :, 11, 3].detach()[None]  # its location's vector
    maps, _ = prototype_saliency(explainer, x, proto, method="prp")
    positive = maps[0].clamp(min=0)
    rows, cols = torch.nonzero(positive, as_tuple=True)
    # the receptive field of feature cell (11, 3) of two stride-2 3x3 convs: rows 37..51
    assert rows.min() >= 37 and rows.max() <= 51 and cols.min() >= 5 and cols.max() <= 19


def test_gradient_method_is_selectable_and_differs() -> None:
    model, explainer = tiny_net("protomask")
    x = torch.randn(3, 3, 16, 16)
    protos = model.head.prototypes.detach()[:3]
    prp, s1 = prototype_saliency(explainer, x, protos, method="prp")
    grad, s2 = prototype_saliency(explainer, x, protos, method="gradient")
    assert torch.allclose(s1, s2)
    assert torch.isfinite(grad).all() and not torch.allclose(prp, grad)
    # input x gradient by hand, summed over colour channels
    xr = x.clone().requires_grad_(True)
    d = ((model.add_on(model.trunk(xr)) - protos) ** 2).sum(1)
    (g,) = torch.autograd.grad(log_similarity(d).sum(), xr)
    assert torch.allclose(grad, (g * x).sum(1), atol=1e-6)
    with pytest.raises(ValueError, match="unknown saliency method"):
        prototype_saliency(explainer, x, protos, method="occlusion")


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat"])
def test_other_composites_run(composite: str) -> None:
    model, explainer = tiny_net("protomask")
    maps, _ = prototype_saliency(
        explainer,
        torch.randn(2, 3, 16, 16),
        model.head.prototypes.detach()[:2],
        composite=composite,
    )
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0


def test_model_is_unchanged_after_prp() -> None:
    model, explainer = tiny_net("protomask")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prototype_saliency(explainer, torch.randn(2, 3, 16, 16), model.head.prototypes.detach()[:2])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # canonizers reverted
    assert not model.trunk.conv1._forward_hooks and not model.trunk.conv1._forward_pre_hooks


def test_paste_back_puts_everything_inside_the_inclusive_box() -> None:
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((4, 16, 16)).astype(np.float32)) + 0.1
    boxes = torch.tensor([[0, 0, 9, 4], [5, 7, 5, 7], [10, 2, 29, 19], [3, 3, 39, 29]])
    canvas = paste_back(maps, boxes, 30, 40)
    assert canvas.shape == (4, 30, 40)
    for c, (x0, y0, x1, y1) in zip(canvas, boxes.tolist(), strict=True):
        inside = torch.zeros(30, 40, dtype=torch.bool)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        assert (c[~inside] == 0).all()
        assert (c[inside] > 0).all()  # every box pixel, edges included
    assert canvas[1].count_nonzero() == 1  # a one-pixel box
    whole = paste_back(maps[:1], torch.tensor([[0, 0, 15, 15]]), 16, 16)
    assert torch.equal(whole[0], maps[0])


def test_resize_and_upsampled_similarity() -> None:
    maps = torch.arange(16.0).reshape(1, 4, 4)
    assert resize_maps(maps, 4, 4) is maps
    assert resize_maps(maps, 8, 12).shape == (1, 8, 12)
    d = torch.tensor([[[0.0, 4.0], [4.0, 4.0]]])
    up = upsampled_similarity(d, 8, 8)
    assert up.shape == (1, 8, 8) and (up >= 0).all()
    assert up[0, :4, :4].mean() > up[0, 4:, 4:].mean()


def test_randomised_copy_changes_only_the_trunk() -> None:
    model, _ = tiny_net("protomask")
    clone = randomised_copy(model, seed=3)
    assert not torch.equal(clone.trunk.conv1.weight, model.trunk.conv1.weight)
    # a shuffle: same values (same scale), other places
    assert torch.equal(
        clone.trunk.conv1.weight.flatten().sort().values,
        model.trunk.conv1.weight.flatten().sort().values,
    )
    assert torch.equal(clone.head.prototypes, model.head.prototypes)
    assert torch.equal(clone.add_on[0].weight, model.add_on[0].weight)
    again = randomised_copy(model, seed=3)
    assert torch.equal(again.trunk.conv1.weight, clone.trunk.conv1.weight)


@pytest.mark.parametrize("signed", [True, False])
def test_zplus_rule_equals_zennits_zplus_without_bias(signed: bool) -> None:
    from zennit.composites import LayerMapComposite
    from zennit.rules import ZPlus
    from zennit.types import Convolution

    from model.saliency import ZPlusRule

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    x = x if signed else x.abs()
    results = []
    for rule in (ZPlusRule(), ZPlus(zero_params=["bias"])):
        comp = LayerMapComposite([(Convolution, rule)])
        xr = x.clone().requires_grad_(True)
        with comp.context(net) as model:
            out = model(xr)
            (r,) = torch.autograd.grad(out, xr, grad_outputs=out.detach().abs())
        results.append(r)
    assert torch.allclose(results[0], results[1], atol=1e-6)
    assert results[0].abs().sum() > 0


def test_report_shows_prototypes_round_robin_over_classes() -> None:
    from model.report import shown_prototypes

    classes = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert shown_prototypes(classes, 4) == [0, 1, 3, 6]
    assert shown_prototypes(classes, None) == list(range(9))
    assert shown_prototypes(classes, 0) == []


def test_merged_batchnorm_is_an_exact_identity_with_positive_eps() -> None:
    """The canonizer folds BatchNorm into the conv: same outputs (zennit 0.5 left the BN
    dividing by sqrt(1 + eps)), a positive eps (zennit 1.0's 0 fails on torch 2.11), and
    every attribute restored on removal."""
    from torch import nn

    from model.saliency import ExactMergeBatchNorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU()).eval()
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    instances = ExactMergeBatchNorm().apply(net)
    assert len(instances) == 1 and 0 < bn.eps < 1e-12
    assert torch.allclose(net(x), before, rtol=1e-6, atol=1e-6)
    for instance in instances:
        instance.remove()
    assert bn.eps == 1e-3
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
