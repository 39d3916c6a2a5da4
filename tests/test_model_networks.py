"""Backbone registry, ProtoMask and ProtoPNet networks: shapes and semantics on tiny inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from model.backbones import (
    BACKBONES,
    backbone_channels,
    backbone_names,
    build_backbone,
    efficientnet_lite0_weights_file,
    torchvision_cache_file,
)
from model.head import ProtoOutput, PrototypeHead, make_addon
from model.protomask import ProtoMask
from model.protopnet import ProtoPNet
from pipeline.errors import ProtomaskError

torch.set_num_threads(1)


def tiny_protomask(**kw) -> ProtoMask:
    torch.manual_seed(0)
    kw = {"prototypes_per_class": 2, "prototype_dim": 6, **kw}
    return ProtoMask(build_backbone("tiny_cnn", "none"), 3, **kw)


def tiny_protopnet(**kw) -> ProtoPNet:
    torch.manual_seed(0)
    kw = {"prototypes_per_class": 2, "prototype_dim": 5, **kw}
    return ProtoPNet(build_backbone("tiny_cnn", "none"), 3, **kw)


# ------------------------------------------------------------------------- backbones
def test_registry_names_and_channels() -> None:
    expected = {
        "resnet18": 512,
        "resnet34": 512,
        "resnet50": 2048,
        "resnet101": 2048,
        "resnet152": 2048,
        "vgg16": 512,
        "vgg19": 512,
        "densenet121": 1024,
        "densenet161": 2208,
        "efficientnet_lite0": 1280,
        "tiny_cnn": 32,
    }
    assert set(backbone_names()) == set(expected)
    assert {n: backbone_channels(n) for n in expected} == expected
    with pytest.raises(ProtomaskError, match="unknown backbone 'resnet9'"):
        build_backbone("resnet9", "none")


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet18"])
def test_trunk_output_matches_declared_channels(name: str) -> None:
    trunk = build_backbone(name, "none").eval()
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, 64, 64))
    assert out.shape[:2] == (2, backbone_channels(name)) and out.dim() == 4


def test_efficientnet_lite0_loads_shipped_imagenet_weights_offline() -> None:
    path = efficientnet_lite0_weights_file()
    assert path.is_file()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    trunk = build_backbone("efficientnet_lite0")  # the default weights: imagenet
    state = trunk.state_dict()
    for key in ("_conv_stem.weight", "_blocks.5._depthwise_conv.weight", "_bn1.running_var"):
        assert torch.equal(state[key], shipped[key]), key
    assert not any(k.startswith("_fc.") for k in state)
    with torch.no_grad():
        out = trunk.eval()(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1280, 2, 2)


def test_missing_weights_file_error_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "resnet18-mine.pth"
    with pytest.raises(ProtomaskError, match="resnet18-mine.pth"):
        build_backbone("resnet18", str(missing))


def test_incompatible_and_corrupt_weights_files_name_the_file(tmp_path: Path) -> None:
    wrong = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny_cnn", "none").state_dict(), wrong)
    with pytest.raises(ProtomaskError, match="tiny.pth: weights do not fit backbone resnet18"):
        build_backbone("resnet18", str(wrong))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ProtomaskError, match="corrupt.pth: cannot read weights") as info:
        build_backbone("tiny_cnn", str(corrupt))
    assert "\n" not in str(info.value)


def test_local_torchvision_file_with_head_and_ddp_prefix(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    full = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    trunk = build_backbone("resnet18", str(path))
    assert torch.equal(
        trunk.state_dict()["layer3.1.conv2.weight"], full.state_dict()["layer3.1.conv2.weight"]
    )


def test_batchnorm_trains_by_default_and_freezes_on_request() -> None:
    def bn_training(trunk) -> set[bool]:
        return {m.training for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)}

    trunk = build_backbone("tiny_cnn", "none").train()
    assert not trunk.freeze_bn and bn_training(trunk) == {True}
    frozen = build_backbone("tiny_cnn", "none", freeze_bn=True).train()
    assert frozen.training and bn_training(frozen) == {False}
    stats = frozen.bn1.running_mean.clone()
    frozen(torch.randn(4, 3, 16, 16))
    assert torch.equal(frozen.bn1.running_mean, stats)
    assert all(p.requires_grad for p in frozen.parameters())  # affine still trained
    model = ProtoMask(build_backbone("tiny_cnn", "none"), 3, prototype_dim=4)
    model.trunk.set_trainable(False)
    model.train()
    assert bn_training(model.trunk) == {False} and model.add_on.training
    assert not any(p.requires_grad for p in model.trunk.parameters())
    model.trunk.set_trainable(True)
    assert bn_training(model.trunk.train()) == {True}
    assert all(p.requires_grad for p in model.trunk.parameters())


def test_torchvision_imagenet_uses_the_hub_cache_never_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached, url = torchvision_cache_file("resnet18")
    assert cached.parent == tmp_path / "checkpoints" and cached.name in url
    with pytest.raises(ProtomaskError, match="not in the torch hub cache") as info:
        build_backbone("resnet18", "imagenet")
    assert str(cached) in str(info.value)
    import torchvision

    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cached)
    assert build_backbone("resnet18", "imagenet").weights == "imagenet"


def test_densenet_old_style_keys_are_renamed(tmp_path: Path) -> None:
    trunk = BACKBONES["densenet121"].build()
    state = {
        k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v
        for k, v in trunk.state_dict().items()
    }
    assert any("norm.1." in k for k in state)
    path = tmp_path / "d121.pth"
    torch.save(state, path)
    build_backbone("densenet121", str(path))


# -------------------------------------------------------------------------- ProtoMask
def brute_force_distances(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """(B, M, D), (P, D) -> (B, P, M) by explicit differences."""
    return ((z[:, None, :, :] - protos[None, :, None, :]) ** 2).sum(-1)


def test_protomask_shapes_and_one_trunk_batch() -> None:
    model = tiny_protomask()
    calls: list[tuple[int, ...]] = []
    model.trunk.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    out = model(torch.randn(4, 5, 3, 16, 16), return_embeddings=True)
    assert isinstance(out, ProtoOutput) and isinstance(out, tuple)
    assert calls == [(20, 3, 16, 16)]
    assert out.logits.shape == (4, 3)
    assert out.min_distances.shape == out.matched.shape == (4, 6)
    assert out.matched.dtype == torch.long
    assert out.distances.shape == (4, 6, 5) and out.embeddings.shape == (4, 5, 6)
    assert model(torch.randn(1, 2, 3, 16, 16)).embeddings is None
    with pytest.raises(ValueError, match="views"):
        model(torch.randn(4, 3, 16, 16))


def test_protomask_min_over_views_matches_brute_force() -> None:
    model = tiny_protomask().eval()
    views = torch.randn(3, 4, 3, 16, 16)
    with torch.no_grad():
        out = model(views, return_embeddings=True)
        # view m of image b is embedded alone: the flattening keeps (b, m) order
        alone = torch.stack(
            [
                torch.stack([model.add_on(model.trunk(views[b, m : m + 1]))[0] for m in range(4)])
                for b in range(3)
            ]
        )
    assert torch.allclose(out.embeddings, alone, atol=1e-5)
    assert ((out.embeddings > 0) & (out.embeddings < 1)).all()  # sigmoid
    ref = brute_force_distances(out.embeddings.double(), model.head.prototypes.double())
    assert torch.allclose(out.distances.double(), ref, atol=1e-4)
    assert torch.allclose(out.min_distances.double(), ref.min(dim=2).values, atol=1e-4)
    assert torch.equal(out.matched, ref.argmin(dim=2))
    sim = torch.log((out.min_distances + 1) / (out.min_distances + 1e-4))
    assert torch.allclose(out.logits, sim @ model.head.last_layer.weight.t(), atol=1e-5)


def test_protomask_gradients_reach_every_group() -> None:
    model = tiny_protomask(addon_layers=2)
    out = model(torch.randn(2, 3, 3, 16, 16))
    (out.logits.sum() + out.min_distances.sum()).backward()
    groups = model.parameter_groups()
    assert set(groups) == {"trunk", "add_on", "prototypes", "last_layer"}
    flat = [p for ps in groups.values() for p in ps]
    assert len(flat) == len(set(map(id, flat))) == len(list(model.parameters()))
    for name, params in groups.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


# ------------------------------------------------------------------------------- head
def test_last_layer_init_and_class_identity() -> None:
    head = PrototypeHead(3, 2, 4)
    identity = head.prototype_class_identity
    assert identity.shape == (6, 3)
    assert torch.equal(identity.argmax(1), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(identity.sum(1), torch.ones(6))
    w = head.last_layer.weight
    assert w.shape == (3, 6) and head.last_layer.bias is None
    assert torch.equal(w, torch.where(identity.t().bool(), 1.0, -0.5))
    zero = PrototypeHead(3, 2, 4, off_class_weight=0.0).last_layer.weight
    assert torch.equal(zero, identity.t())
    assert torch.equal(head.class_prototype_table(), torch.tensor([[0, 1], [2, 3], [4, 5]]))


def test_prototype_init_is_seeded_uniform() -> None:
    a, b, c = (
        PrototypeHead(4, 3, 50, seed=7),
        PrototypeHead(4, 3, 50, seed=7),
        PrototypeHead(4, 3, 50, seed=8),
    )
    assert torch.equal(a.prototypes, b.prototypes)
    assert not torch.equal(a.prototypes, c.prototypes)
    assert a.prototypes.min() >= 0 and a.prototypes.max() < 1
    assert abs(a.prototypes.mean().item() - 0.5) < 0.05


def test_head_distances_stay_float32_under_bf16_autocast() -> None:
    head = PrototypeHead(2, 2, 256, seed=0)
    z = torch.rand(3, 256)
    exact = head.distances(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = head.distances(z.bfloat16())
        logits = head.classify(auto)
    assert auto.dtype == logits.dtype == torch.float32
    assert torch.allclose(auto, exact, rtol=0.02)


# -------------------------------------------------------------------------- ProtoPNet
def test_protopnet_min_over_locations_matches_brute_force() -> None:
    model = tiny_protopnet().eval()
    images = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        out = model(images, return_embeddings=True)
    f = out.embeddings
    assert f.shape == (2, 5, 5, 6)  # tiny_cnn: stride 4
    assert out.distances.shape == (2, 6, 5, 6)
    protos = model.head.prototypes.double()
    ref = ((f.double()[:, None] - protos[None, :, :, None, None]) ** 2).sum(2)  # (B, P, h, w)
    assert torch.allclose(out.distances.double(), ref, atol=1e-4)
    flat = ref.flatten(2)
    assert torch.allclose(out.min_distances.double(), flat.min(2).values, atol=1e-4)
    assert torch.equal(out.matched, flat.argmin(2))
    h, w = out.matched // 6, out.matched % 6
    picked = ref[torch.arange(2)[:, None], torch.arange(6)[None], h, w]
    assert torch.allclose(picked, flat.min(2).values)
    assert out.logits.shape == (2, 3)
    cands, grid = model.push_candidates(images)
    assert grid == (5, 6) and cands.shape == (2, 30, 5)
    assert torch.allclose(cands[1, 7], f[1, :, 1, 1])


def test_both_models_share_the_head_code() -> None:
    assert type(tiny_protomask().head) is type(tiny_protopnet().head) is PrototypeHead
    assert isinstance(tiny_protopnet().add_on[-1], nn.Sigmoid)


def test_build_model_freezes_batchnorm_by_default_param() -> None:
    """train.model.freeze_bn (default on): BatchNorm stays in eval mode in model.train(), so
    training, evaluation and push see the same features (EfficientNet-Lite0's momentum 0.01
    lets running statistics lag far behind the batch statistics in a short run)."""
    from dataclasses import replace

    from model.training import build_model
    from pipeline.params import ModelParams, TrainParams

    def bn_training(model: nn.Module) -> set[bool]:
        return {m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)}

    tiny = ModelParams(backbone="tiny_cnn", weights="none")
    small = replace(TrainParams().protomask, prototypes_per_class=2, prototype_dim=4)
    assert tiny.freeze_bn
    frozen = build_model(
        "protomask", replace(TrainParams(), seeds=[0], model=tiny, protomask=small), 3
    )
    frozen = frozen.train()
    assert bn_training(frozen) == {False} and frozen.add_on.training
    assert all(p.requires_grad for p in frozen.trunk.parameters())
    stats = frozen.trunk.bn1.running_mean.clone()
    frozen(torch.randn(2, 3, 3, 16, 16))
    assert torch.equal(frozen.trunk.bn1.running_mean, stats)
    trains = build_model(
        "protomask",
        replace(TrainParams(), seeds=[0], model=replace(tiny, freeze_bn=False), protomask=small),
        3,
    ).train()
    assert bn_training(trains) == {True}


def test_addon_init_param_reaches_both_models_and_default_avoids_saturation() -> None:
    """train.<model>.addon_init: with a wide trunk (1280 channels, activations up to 6 like
    EfficientNet-Lite0's) ProtoPNet's kaiming fan_out init saturates most sigmoid outputs
    at the start (the baseline then stayed at chance); PyTorch's default init does not."""
    from dataclasses import replace

    from model.head import make_addon
    from model.training import build_model
    from pipeline.params import ModelParams, TrainParams

    torch.manual_seed(0)
    trunk_out = torch.rand(4, 1280, 4, 4) * 2  # non-negative, mean 1, like a ReLU6 trunk

    def saturated(kaiming: bool) -> float:
        torch.manual_seed(0)
        out = make_addon(1280, 32, 2, pool=False, kaiming=kaiming)(trunk_out)
        return float(((out < 0.01) | (out > 0.99)).float().mean())

    assert saturated(kaiming=True) > 0.5
    assert saturated(kaiming=False) < 0.05
    tiny = ModelParams(backbone="tiny_cnn", weights="none")

    def built(kind: str, init: str) -> nn.Module:
        torch.manual_seed(0)
        own = replace(getattr(TrainParams(), kind), prototypes_per_class=2, prototype_dim=4)
        section = {kind: replace(own, addon_init=init)}
        return build_model(
            kind, replace(TrainParams(), seeds=[0], model=tiny, **section), 3
        ).add_on[0]

    for kind in ("protomask", "protopnet"):
        assert getattr(TrainParams(), kind).addon_init == "default"
        default, kaiming = built(kind, "default"), built(kind, "kaiming")
        assert torch.count_nonzero(kaiming.bias) == 0 and torch.count_nonzero(default.bias) > 0


@pytest.mark.parametrize(
    "cls, dim, layers, pool", [(ProtoMask, 1280, 1, True), (ProtoPNet, 128, 2, False)]
)
def test_a_network_builds_trunk_add_on_head_in_that_order(cls, dim, layers, pool) -> None:
    """The shared base class keeps each network's defaults, state dict keys and random
    draws: the same values as building trunk, add-on and head by hand, in that order."""
    torch.manual_seed(0)
    model = cls(build_backbone("tiny_cnn", "none"), 3, addon_init="kaiming", seed=4)
    torch.manual_seed(0)
    trunk = build_backbone("tiny_cnn", "none")
    add_on = make_addon(trunk.out_channels, dim, layers, pool=pool, kaiming=True)
    head = PrototypeHead(3, 10, dim, seed=4)
    by_hand = {
        **{f"trunk.{k}": v for k, v in trunk.state_dict().items()},
        **{f"add_on.{k}": v for k, v in add_on.state_dict().items()},
        **{f"head.{k}": v for k, v in head.state_dict().items()},
    }
    state = model.state_dict()
    assert list(state) == list(by_hand)
    assert all(torch.equal(state[k], by_hand[k]) for k in state)
    assert list(model.parameter_groups()) == ["trunk", "add_on", "prototypes", "last_layer"]
