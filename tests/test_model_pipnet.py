"""PIP-Net: network, losses, phases, two-view dataset, and the original's numbers.

The reference numbers in tests/data/pipnet_reference.json come from the original code
(M-Nauta/PIPNet) via benchmarks/crosscheck/pipnet_reference.py, on inputs drawn from the
seeds recorded there in the order that script documents.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.backbones import Trunk, build_backbone
from model.pipnet import PIPNet, PresenceOutput, trunk_groups
from model.pipnet_losses import (
    PIPNetLossWeights,
    align_loss,
    class_loss,
    pipnet_loss,
    pipnet_phase,
    split_views,
    tanh_loss,
)
from pipeline.pipnet_views import TwoViewDataset

REFERENCE = Path(__file__).parent / "data" / "pipnet_reference.json"
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "crosscheck" / "pipnet_reference.py"


def draw(case: dict) -> dict[str, torch.Tensor]:
    """The inputs of one case, drawn by the script that made the reference numbers (it
    imports only torch until its main() runs)."""
    spec = importlib.util.spec_from_file_location("pipnet_reference", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.draw(case)


class IdentityTrunk(Trunk):
    """Feature maps in, the same maps out: the inputs are the trunk's output."""

    def __init__(self, channels: int) -> None:
        super().__init__("identity", channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def tiny_net(num_prototypes: int | None = 8, classes: int = 3) -> PIPNet:
    torch.manual_seed(0)
    return PIPNet(build_backbone("tiny_cnn", "none"), classes, num_prototypes=num_prototypes)


def one_hot_maps(index: torch.Tensor, p: int) -> torch.Tensor:
    """(B, h, w) prototype indices -> one-hot presence maps (B, P, h, w)."""
    return torch.nn.functional.one_hot(index, p).permute(0, 3, 1, 2).float()


# ------------------------------------------------------------------------------ network
@pytest.mark.parametrize("prototypes", [None, 8])
def test_shapes_softmax_and_pooling(prototypes: int | None) -> None:
    net = tiny_net(prototypes)
    out = net(torch.randn(2, 3, 32, 32), return_features=True)
    p = 32 if prototypes is None else 8
    assert isinstance(out, PresenceOutput)
    assert out.logits.shape == (2, 3) and out.pooled.shape == (2, p)
    assert out.maps.shape == (2, p, 8, 8) and out.features.shape == (2, 32, 8, 8)
    assert torch.allclose(out.maps.sum(1), torch.ones(2, 8, 8), atol=1e-6)
    assert torch.equal(out.pooled, out.maps.flatten(2).gather(2, out.matched[..., None])[..., 0])
    assert ((out.pooled >= 0) & (out.pooled <= 1)).all()
    assert isinstance(net.add_on, torch.nn.Identity) == (prototypes is None)


def test_classifier_is_non_negative_and_clamped() -> None:
    net = tiny_net()
    with torch.no_grad():
        net.classifier.weight.copy_(torch.tensor([[-1.0] * 8, [2e-3] * 8, [0.5] * 8]))
    pooled = torch.rand(4, 8)
    logits = net.classifier(pooled)
    assert torch.equal(logits[:, 0], torch.zeros(4))  # negative weights act as 0
    assert torch.allclose(logits[:, 2], 0.5 * pooled.sum(1))
    net.classifier.normalization_multiplier.data.fill_(0.5)
    net.clamp_classifier_()
    w = net.classifier.weight
    assert torch.equal(w[0], torch.zeros(8)) and torch.allclose(w[1], torch.full((8,), 1e-3))
    assert torch.allclose(w[2], torch.full((8,), 0.499))
    assert net.classifier.normalization_multiplier.item() == 1.0
    assert net.relevant_prototypes().all() and not net.relevant_prototypes(0.6).any()
    evidence = net.class_evidence(pooled)
    assert torch.allclose(evidence.sum(2), net.classifier(pooled), atol=1e-6)


def test_original_init_and_inference_threshold() -> None:
    net = tiny_net()
    assert net.classifier.normalization_multiplier.item() == 2.0
    assert not net.classifier.normalization_multiplier.requires_grad
    assert abs(net.classifier.weight.mean().item() - 1.0) < 0.1
    maps = torch.zeros(1, 8, 1, 2)
    maps[0, :, 0, 0] = torch.tensor([0.05, 0.15, 0.8, 0, 0, 0, 0, 0])
    maps[0, 0, 0, 1] = 1.0
    logits, pooled, matched = net.head(maps, inference=True)
    assert pooled[0, :3].tolist() == pytest.approx([1.0, 0.15, 0.8])
    assert matched[0, :3].tolist() == [1, 0, 0]
    maps[0, 0, 0, 1] = 0.09
    _, pooled, _ = net.head(maps, inference=True)
    assert pooled[0, 0].item() == 0.0  # 0.09 < 0.1: absent at evaluation
    assert net.head(maps)[1][0, 0].item() == pytest.approx(0.09)


def test_eval_mode_forward_applies_the_cut_off_as_evaluate_does() -> None:
    """Validation (eval mode) scores what evaluate scores, so selection uses the cut-off."""
    net = tiny_net(num_prototypes=256)
    images = torch.randn(2, 3, 32, 32)
    train_out = net.train()(images)
    assert (train_out.pooled < 0.1).any()  # barely trained: weak presences
    eval_out = net.eval()(images)
    cut = net.head(eval_out.maps, inference=True)
    assert torch.equal(eval_out.logits, cut[0]) and torch.equal(eval_out.pooled, cut[1])
    assert not torch.equal(eval_out.pooled, net(images, inference=False).pooled)


def test_parameter_groups_resnet_and_generic() -> None:
    trunk = build_backbone("resnet18", "none")
    groups = trunk_groups(trunk)
    by_id = {id(p): n for n, p in trunk.named_parameters()}
    prefixes = {g: {by_id[id(p)].split(".")[0] for p in ps} for g, ps in groups.items()}
    assert prefixes == {
        "trunk_stem": {"conv1", "bn1", "layer1"},
        "trunk": {"layer2"},
        "trunk_top": {"layer3", "layer4"},
        "trunk_last": {"layer4"},
    }
    assert all(by_id[id(p)].startswith("layer4.1.") for p in groups["trunk_last"])
    tiny = trunk_groups(build_backbone("tiny_cnn", "none"))
    assert len(tiny["trunk_last"]) == 3 and len(tiny["trunk"]) == 3  # conv2, bn2 / conv1, bn1
    lite = build_backbone("efficientnet_lite0", "none")
    by_id = {id(p): n for n, p in lite.named_parameters()}
    last = {by_id[id(p)] for p in trunk_groups(lite)["trunk_last"]}
    assert last == {"_conv_head.weight", "_bn1.weight", "_bn1.bias"}  # not only the last BN
    net = tiny_net()
    all_groups = net.parameter_groups()
    assert sum(len(v) for v in all_groups.values()) == len(list(net.parameters()))
    assert net.set_phase("finetune") == ("classifier",)
    assert [p.requires_grad for p in net.parameters()].count(True) == 1
    net.set_phase("pretrain")
    assert not net.classifier.weight.requires_grad and net.add_on.weight.requires_grad
    assert not any(p.requires_grad for p in all_groups["trunk"])
    net.set_phase("train")
    assert all(p.requires_grad for p in all_groups["trunk"])
    with pytest.raises(ValueError):
        net.set_phase("warmup")


# ------------------------------------------------------------------------------- losses
def test_align_loss_edge_cases() -> None:
    index = torch.randint(0, 5, (2, 3, 3), generator=torch.Generator().manual_seed(0))
    same = one_hot_maps(index, 5)
    assert align_loss(same, same.clone()).item() == pytest.approx(0.0, abs=1e-9)
    uniform = torch.full((2, 5, 3, 3), 0.2)
    assert align_loss(uniform, uniform).item() == pytest.approx(math.log(5), rel=1e-6)
    other = one_hot_maps((index + 1) % 5, 5)
    assert align_loss(same, other).item() == pytest.approx(-math.log(1e-12), rel=1e-6)


def test_tanh_and_class_loss_edge_cases() -> None:
    full = torch.ones(4, 6)
    expected = -math.log(math.tanh(4) + 1e-8)  # float32: log of a value near 1
    assert tanh_loss(full, full).item() == pytest.approx(expected, rel=1e-4)
    gap = full.clone()
    gap[:, 0] = 0  # prototype 0 absent from the whole batch of one view
    expected = (-math.log(1e-8) / 6 - math.log(math.tanh(4) + 1e-8) * 5 / 6) / 2
    expected += -math.log(math.tanh(4) + 1e-8) / 2
    assert tanh_loss(gap, full).item() == pytest.approx(expected, rel=1e-5)
    labels = torch.tensor([0, 2])
    assert class_loss(torch.ones(2, 3), labels).item() == pytest.approx(math.log(3))
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    scores = torch.log1p(logits**2)
    expected = -torch.log_softmax(scores, 1)[[0, 1], labels].mean().item()
    assert class_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_phase_weights_and_schedule() -> None:
    weights = PIPNetLossWeights()
    assert (weights.align, weights.tanh, weights.classification) == (5.0, 2.0, 2.0)
    pre = weights.for_phase("pretrain", epoch=2, pretrain_epochs=10)
    assert (pre.align, pre.tanh, pre.classification) == (pytest.approx(0.3), 5.0, 0.0)
    fine = weights.for_phase("finetune")
    assert (fine.align, fine.tanh, fine.classification) == (0.0, 0.0, 2.0)
    assert weights.for_phase("frozen") == weights.for_phase("train")
    phases = [pipnet_phase(e, 10, 3, 10) for e in range(25)]
    assert phases[0] == ("pretrain", 0) and phases[9] == ("pretrain", 9)
    assert phases[10] == ("finetune", 0) and phases[12] == ("finetune", 2)
    assert phases[13] == ("frozen", 3) and phases[19] == ("frozen", 9)
    assert phases[20] == ("train", 10)
    assert pipnet_phase(0, 0) == ("frozen", 0)  # no pretraining: no fine-tuning epochs


@pytest.mark.parametrize(
    ("phase", "grads"),
    [
        ("pretrain", {"add_on": True, "trunk_last": True, "classifier": False}),
        ("finetune", {"add_on": False, "trunk_last": False, "classifier": True}),
        ("train", {"add_on": True, "trunk": True, "classifier": True}),
    ],
)
def test_gradients_reach_the_phase_groups(phase: str, grads: dict[str, bool]) -> None:
    net = tiny_net()
    net.set_phase(phase)
    out_a, out_b = split_views(net(torch.randn(4, 3, 32, 32)))
    labels = torch.tensor([0, 2])
    total, parts = pipnet_loss(out_a, out_b, labels, PIPNetLossWeights(), phase)
    assert set(parts) == {"total", "align", "tanh", "classification"}
    total.backward()
    groups = net.parameter_groups()
    for name, expected in grads.items():
        got = any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[name])
        assert got == expected, name


# ------------------------------------------------------------------------ original code
@pytest.mark.parametrize("name", ["conv", "identity"])
def test_matches_original_code(name: str) -> None:
    case = next(c for c in json.loads(REFERENCE.read_text())["cases"] if c["name"] == name)
    inputs = draw(case)
    net = PIPNet(IdentityTrunk(case["C"]), case["K"], num_prototypes=case["P"])
    with torch.no_grad():
        if "conv_w" in inputs:
            net.add_on.weight.copy_(inputs["conv_w"])
            net.add_on.bias.copy_(inputs["conv_b"])
        net.classifier.weight.copy_(inputs["weight"])
    out = net(inputs["features"])
    ref = case["outputs"]
    close = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.logits.detach(), ref["logits"], **close)
    np.testing.assert_allclose(out.pooled.detach(), ref["pooled"], **close)
    assert out.maps.double().sum().item() == pytest.approx(ref["maps_sum"], rel=1e-6)
    inference = net(inputs["features"], inference=True)
    np.testing.assert_allclose(inference.logits.detach(), ref["logits_inference"], **close)
    np.testing.assert_allclose(inference.pooled.detach(), ref["pooled_inference"], **close)
    out_a, out_b = split_views(out)
    weights, labels = PIPNetLossWeights(), inputs["labels"]
    mult = net.classifier.normalization_multiplier
    losses = case["losses"]
    totals = {
        "total_pretrain_epoch3_of10": pipnet_loss(
            out_a, out_b, labels, weights, "pretrain", epoch=2
        ),
        "total_train": pipnet_loss(out_a, out_b, labels, weights, "train", multiplier=mult),
        "total_finetune": pipnet_loss(out_a, out_b, labels, weights, "finetune", multiplier=mult),
    }
    parts = totals["total_train"][1]
    for key in ("align", "tanh", "classification"):
        assert parts[key] == pytest.approx(losses[key], rel=1e-5), key
    for key, (total, _) in totals.items():
        assert total.item() == pytest.approx(losses[key], rel=1e-5), key
    features = inputs["features"].clone().requires_grad_(True)
    a, b = split_views(net(features))
    train = pipnet_loss(a, b, labels, weights, "train", multiplier=mult)[0]
    for key, loss in (("train", train), ("align", align_loss(a.maps, b.maps))):
        (grad,) = torch.autograd.grad(loss, features, retain_graph=True)
        total, absolute = losses[f"grad_{key}_features"]
        assert grad.double().abs().sum().item() == pytest.approx(absolute, rel=1e-5), key
        assert grad.double().sum().item() == pytest.approx(total, rel=1e-4, abs=1e-6), key


# ---------------------------------------------------------------------- two-view dataset
class FakeImages:
    """Random uint8 images with labels and ids, as FullImageDataset without augmentation."""

    def __init__(self, count: int = 3, side: int = 40) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, 3, side, side), generator=gen).to(torch.uint8)
        self.labels = np.arange(count) % 2
        self.image_ids = np.arange(count) + 100
        self.out_size = 32

    def raw_image(self, index: int) -> torch.Tensor:
        return self.images[index].clone()

    def __len__(self) -> int:
        return len(self.images)


def test_two_views_are_deterministic_per_seed_epoch_index() -> None:
    data = TwoViewDataset(FakeImages(), seed=3)
    state = torch.random.get_rng_state()
    a, b, label, image_id = data[1]
    assert torch.equal(state, torch.random.get_rng_state())  # global stream untouched
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    assert (label, image_id) == (1, 101)
    again = TwoViewDataset(FakeImages(), seed=3)[1]
    assert torch.equal(again[0], a) and torch.equal(again[1], b)
    views = [data.views(1) for _ in range(2)]
    assert torch.equal(views[0][0], views[1][0])
    data.set_epoch(1)
    assert not torch.equal(data[1][0], a)
    pairs = [data.views(i) for i in range(len(data))]
    assert any(not torch.equal(x, y) for x, y in pairs)  # the views differ (colour, crop)
    with pytest.raises(ValueError):
        TwoViewDataset(FakeImages(), color="vivid")
