"""PIP-Net (Nauta et al., CVPR 2023): prototypes as channels of a softmax over the feature map.

Images (B, 3, H, W) -> trunk (B, C, h, w) -> add-on: a 1x1 conv to P channels (or nothing
when P = C, the original's default ``num_features 0``) -> softmax over the P channels at
every location: the presence maps (B, P, h, w), each location's scores summing to 1 ->
global max over locations: the pooled presence (B, P) in [0, 1] -> :class:`NonNegLinear`
(weights ReLU'd in the forward, no bias by default) -> logits (B, K).

Training-time conventions of the original (M-Nauta/PIPNet):

* init: add-on conv xavier-uniform (gain of sigmoid = 1), classifier weights N(1, 0.1),
  normalization multiplier 2 (never trained), bias 0;
* after every optimiser step outside pretraining :meth:`PIPNet.clamp_classifier_`
  (weights w <- max(w - 1e-3, 0), multiplier >= 1, bias >= 0);
* evaluation (eval mode, or ``forward(inference=True)``): pooled scores below 0.1 are zeroed before the
  classifier; the original also applies w <- max(w - 1e-3, 0) to the classifier before
  every evaluation batch (call :meth:`PIPNet.clamp_classifier_` where wanted);
* the local explanation of a prediction is the presence map of each prototype, weighted by
  the classifier (:meth:`PIPNet.class_evidence` gives pooled * relu(w) per class).

The trunk's parameters are split as the original splits ResNet-50 and as the reference
(uos-sis/quanproto) splits any backbone, see :func:`trunk_groups`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from model.backbones import Trunk

PRESENCE_THRESHOLD = 0.1  # evaluation: pooled scores below it count as absent
WEIGHT_SHRINK = 1e-3  # classifier weights are shrunk by it (and clamped at 0) after each step
# The original's freezing schedule per phase (see ``PIPNet.set_phase``).
PHASE_GROUPS: dict[str, tuple[str, ...]] = {
    "pretrain": ("trunk_top", "trunk_last", "add_on"),
    "finetune": ("classifier",),
    "frozen": ("trunk_top", "trunk_last", "add_on", "classifier"),
    "train": ("trunk", "trunk_top", "trunk_last", "add_on", "classifier"),
}


class PresenceOutput(NamedTuple):
    """Forward result of :class:`PIPNet` (a NamedTuple, so DDP and pytree handle it).

    ``pooled`` is the max over locations of each presence map (zeroed below 0.1 when the
    forward ran with ``inference=True``); ``matched`` the flat location ``h * w_size + w``
    of that maximum; ``maps`` the softmax presence maps; ``features`` (only when asked for)
    the trunk's feature map (B, C, h, w).
    """

    logits: Tensor  # (B, K)
    pooled: Tensor  # (B, P)
    matched: Tensor  # (B, P) long
    maps: Tensor  # (B, P, h, w)
    features: Optional[Tensor] = None


class NonNegLinear(nn.Module):
    """Linear layer y = x relu(W)^T + b with W (K, P); holds PIP-Net's normalization multiplier.

    The multiplier m is the exponent of the class loss' log(1 + y^m) (see
    model.pipnet_losses); it is a parameter (as in the original's state dict) that no
    optimiser trains.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.normalization_multiplier = nn.Parameter(torch.ones(1), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The original's init: W ~ N(1, 0.1), multiplier 2, bias 0."""
        with torch.no_grad():
            self.weight.normal_(1.0, 0.1, generator=generator)
            self.normalization_multiplier.fill_(2.0)
            if self.bias is not None:
                self.bias.zero_()

    def effective_weight(self) -> Tensor:
        """relu(W): the weights the forward uses, (K, P)."""
        return torch.relu(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def trunk_groups(trunk: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trunk's parameters as the original's optimiser groups.

    ``trunk_last``: the last block, which the original trains with ``lr_block``: the first
    two dotted components of the trunk's last convolution (``layer4.2`` of ResNet-50, as
    the reference finds it from the last parameter), with every parameter after it (e.g.
    EfficientNet-Lite's ``_conv_head`` and its ``_bn1``: the reference's rule, the module
    of the last parameter, would give only that final batch norm, so pretraining would
    train 2,560 parameters of a 3.4 M trunk). For a ResNet (a ``layer4`` attribute) the
    rest follows the original's ResNet-50 split: ``trunk_top`` = layer3 and the rest of
    layer4 (``lr_block``), ``trunk`` = layer2 (``lr_net``), ``trunk_stem`` = conv1, bn1,
    layer1 (never trained). Any other trunk: everything else is ``trunk`` (the reference's
    split), the others empty.
    """
    named = list(trunk.named_parameters())
    groups: dict[str, list[nn.Parameter]] = {
        "trunk_stem": [],
        "trunk": [],
        "trunk_top": [],
        "trunk_last": [],
    }
    if not named:
        return groups
    convs = [n for n, m in trunk.named_modules() if isinstance(m, nn.Conv2d)]
    anchor = convs[-1] + ".weight" if convs else named[-1][0]
    last = ".".join(anchor.split(".")[:-1][:2])  # the block of the last convolution
    after = next(i for i, (name, _) in enumerate(named) if name == anchor)
    resnet = hasattr(trunk, "layer4")
    for index, (name, param) in enumerate(named):
        if name.startswith(last + ".") or index >= after:
            groups["trunk_last"].append(param)
        elif not resnet or name.startswith("layer2."):
            groups["trunk"].append(param)
        elif name.startswith(("layer3.", "layer4.")):
            groups["trunk_top"].append(param)
        else:
            groups["trunk_stem"].append(param)
    return groups


class PIPNet(nn.Module):
    """Trunk -> [1x1 conv] -> softmax over prototypes -> max-pool -> non-negative classifier.

    Args:
        trunk: the backbone (``out_channels`` C).
        num_classes: K.
        num_prototypes: P; None or C: no conv, the trunk's channels are the prototypes (the
            original's default); otherwise a 1x1 conv C -> P with bias.
        bias: a (non-negative) classifier bias, off in the original's default.
    """

    def __init__(
        self,
        trunk: Trunk,
        num_classes: int,
        *,
        num_prototypes: int | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        channels = trunk.out_channels
        prototypes = channels if num_prototypes is None else num_prototypes
        if num_classes < 2 or prototypes < 1:
            raise ValueError(
                f"need num_classes >= 2, num_prototypes >= 1; got {num_classes}, {prototypes}"
            )
        self.trunk = trunk
        self.num_classes = num_classes
        self.num_prototypes = prototypes
        self.add_on: nn.Module = nn.Identity()
        if prototypes != channels:
            conv = nn.Conv2d(channels, prototypes, kernel_size=1)
            nn.init.xavier_uniform_(conv.weight, gain=nn.init.calculate_gain("sigmoid"))
            self.add_on = conv
        self.classifier = NonNegLinear(prototypes, num_classes, bias=bias)
        self.channels_last = False

    def presence_maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax presence maps (B, P, h, w) of images (B, 3, H, W), and the trunk's map."""
        if images.dim() != 4:
            raise ValueError(f"PIP-Net expects images (B, 3, H, W), got {tuple(images.shape)}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.trunk(images)
        return self.maps_of(features), features

    def maps_of(self, features: Tensor) -> Tensor:
        """Presence maps from a trunk feature map (B, C, h, w): softmax over the P channels."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return torch.softmax(self.add_on(features.float()), dim=1)

    def head(self, maps: Tensor, *, inference: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, pooled, matched) from presence maps (B, P, h, w).

        ``inference``: pooled scores below 0.1 are set to 0 before the classifier (and in
        the returned ``pooled``), as the original's evaluation forward.
        """
        pooled, matched = maps.flatten(2).max(dim=2)
        if inference:
            pooled = torch.where(pooled < PRESENCE_THRESHOLD, torch.zeros_like(pooled), pooled)
        with torch.autocast(device_type=maps.device.type, enabled=False):
            logits = self.classifier(pooled.float())
        return logits, pooled, matched

    def forward(
        self,
        images: Tensor,
        *,
        inference: Optional[bool] = None,
        return_features: bool = False,
    ) -> PresenceOutput:
        """Logits, pooled presence, location of each maximum, presence maps [, features].

        ``inference`` None: in eval mode (validation, as the original's evaluation, so
        model selection scores what evaluate scores), not in training mode.
        """
        maps, features = self.presence_maps(images)
        inference = not self.training if inference is None else inference
        logits, pooled, matched = self.head(maps, inference=inference)
        return PresenceOutput(logits, pooled, matched, maps, features if return_features else None)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by the original's optimiser groups.

        ``trunk_stem`` / ``trunk`` / ``trunk_top`` / ``trunk_last`` (see :func:`trunk_groups`;
        the original's lr: none / lr_net / lr_block / lr_block), ``add_on`` (lr_block * 10;
        empty without the conv), ``classifier`` (weight and bias, lr; its own optimiser),
        ``multiplier`` (the normalization multiplier, never trained).
        """
        groups = trunk_groups(self.trunk)
        groups["add_on"] = list(self.add_on.parameters())
        groups["classifier"] = [self.classifier.weight]
        if self.classifier.bias is not None:
            groups["classifier"].append(self.classifier.bias)
        groups["multiplier"] = [self.classifier.normalization_multiplier]
        return groups

    def set_phase(self, phase: str) -> tuple[str, ...]:
        """Set requires_grad as the original per phase; returns the trainable groups.

        ``pretrain``: trunk_top, trunk_last, add_on; ``finetune`` (the first 3 training
        epochs after pretraining): classifier only; ``frozen`` (training epochs up to
        ``freeze_epochs``): trunk_top, trunk_last, add_on, classifier; ``train``: all but
        trunk_stem and the multiplier. BatchNorm keeps training, as in the original.
        """
        if phase not in PHASE_GROUPS:
            raise ValueError(f"unknown phase {phase!r} ({' | '.join(PHASE_GROUPS)})")
        trainable = PHASE_GROUPS[phase]
        for name, params in self.parameter_groups().items():
            for param in params:
                param.requires_grad_(name in trainable)
        return trainable

    @torch.no_grad()
    def clamp_classifier_(self, shrink: float = WEIGHT_SHRINK) -> None:
        """The original's step after each update: W <- max(W - shrink, 0), m >= 1, b >= 0."""
        layer = self.classifier
        layer.weight.copy_((layer.weight - shrink).clamp_min(0.0))
        layer.normalization_multiplier.clamp_(min=1.0)
        if layer.bias is not None:
            layer.bias.clamp_(min=0.0)

    def relevant_prototypes(self, threshold: float = WEIGHT_SHRINK) -> Tensor:
        """(P,) bool: prototypes with a classifier weight above ``threshold`` for some class
        (the original's global explanation size is their count)."""
        return (self.classifier.weight > threshold).any(dim=0)

    def class_evidence(self, pooled: Tensor) -> Tensor:
        """(B, K, P): each prototype's contribution pooled * relu(w) to each class' logit."""
        return pooled[:, None, :] * self.classifier.effective_weight()[None]
