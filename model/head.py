"""What ProtoMask and the ProtoPNet baseline share: add-on, prototypes, similarity, classifier,
and their base class :class:`PrototypeNetwork` (trunk, add-on, head, optimiser groups).

Both networks end in one :class:`PrototypeHead`: P = prototypes_per_class * num_classes
D-dimensional prototypes (prototype p belongs to class p // prototypes_per_class), squared
L2 distances by expansion, ProtoPNet's log similarity and a bias-free linear classifier.
The head always computes in float32 with autocast off: with D in the hundreds, the
expansion ||z||^2 - 2 z.p + ||p||^2 cancels catastrophically in bf16/fp16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from model.backbones import Trunk


class ProtoOutput(NamedTuple):
    """Forward result of both networks (a NamedTuple, so DDP and pytree handle it).

    ``matched`` is, per prototype, the index of the candidate that gave the minimum: the
    view index m for ProtoMask, the flat feature-map location ``h * W + w`` for ProtoPNet.
    ``distances`` holds every candidate's distance, (B, P, M) or (B, P, H, W).
    ``embeddings`` (only when asked for): the view vectors (B, M, D) for ProtoMask, the
    add-on feature map (B, D, H, W) for ProtoPNet.
    """

    logits: Tensor  # (B, K)
    min_distances: Tensor  # (B, P)
    matched: Tensor  # (B, P) long
    distances: Tensor  # (B, P, *candidates)
    embeddings: Optional[Tensor] = None


def make_addon(
    in_channels: int, dim: int, layers: int = 1, *, pool: bool, kaiming: bool = False
) -> nn.Sequential:
    """The add-on: 1x1 conv(s) then [global average pool] then sigmoid.

    ``layers`` 1: conv(C -> D) (ProtoMask's reference add-on); 2: conv(C -> D), ReLU,
    conv(D -> D) (ProtoPNet's shallow add-on). ``pool``: average over locations (one vector
    per input, ProtoMask) or keep the map (ProtoPNet). ``kaiming``: ProtoPNet's init
    (kaiming normal, fan_out, zero bias) instead of PyTorch's default.
    """
    if layers not in (1, 2):
        raise ValueError(f"add-on layers must be 1 or 2, got {layers}")
    mods: list[nn.Module] = [nn.Conv2d(in_channels, dim, kernel_size=1)]
    if layers == 2:
        mods += [nn.ReLU(), nn.Conv2d(dim, dim, kernel_size=1)]
    if kaiming:
        for m in mods:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
    if pool:
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    mods.append(nn.Sigmoid())
    return nn.Sequential(*mods)


class PrototypeHead(nn.Module):
    """Prototypes (P, D), their classes, the similarity and the last layer."""

    def __init__(
        self,
        num_classes: int,
        prototypes_per_class: int,
        dim: int,
        *,
        off_class_weight: float = -0.5,
        seed: int = 0,
        epsilon: float = 1e-4,
    ) -> None:
        super().__init__()
        if num_classes < 2 or prototypes_per_class < 1 or dim < 1:
            raise ValueError(
                f"need num_classes >= 2, prototypes_per_class >= 1, dim >= 1; got "
                f"{num_classes}, {prototypes_per_class}, {dim}"
            )
        self.num_classes = num_classes
        self.prototypes_per_class = prototypes_per_class
        self.dim = dim
        self.epsilon = epsilon
        num = num_classes * prototypes_per_class
        gen = torch.Generator().manual_seed(seed)
        self.prototypes = nn.Parameter(torch.rand(num, dim, generator=gen))
        classes = torch.arange(num) // prototypes_per_class
        self.register_buffer("prototype_classes", classes)
        self.register_buffer(
            "prototype_class_identity", nn.functional.one_hot(classes, num_classes).float()
        )
        self.register_buffer("_class_table", self._build_class_table(), persistent=False)
        self.last_layer = nn.Linear(num, num_classes, bias=False)
        self.set_last_layer(off_class_weight)

    prototype_classes: Tensor
    prototype_class_identity: Tensor
    _class_table: Tensor

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    def set_last_layer(self, off_class_weight: float) -> None:
        """ProtoPNet's init: +1 from a prototype to its class, ``off_class_weight`` elsewhere."""
        own = self.prototype_class_identity.t()
        with torch.no_grad():
            self.last_layer.weight.copy_(own + off_class_weight * (1 - own))

    def class_prototype_table(self) -> Tensor:
        """(K, Q) long: the prototype indices of each class, padded with -1 (cached)."""
        return self._class_table

    def _build_class_table(self) -> Tensor:
        classes = self.prototype_classes
        counts = torch.bincount(classes, minlength=self.num_classes)
        table = torch.full((self.num_classes, int(counts.max())), -1, dtype=torch.long)
        order = torch.argsort(classes, stable=True)
        slot = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[classes[order]]
        table[classes[order], slot] = order
        return table

    def distances(self, z: Tensor) -> Tensor:
        """Squared L2 distances (..., D) -> (..., P), float32, clamped at 0."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            p = self.prototypes.float()
            d = (z * z).sum(-1, keepdim=True) - 2 * (z @ p.t()) + (p * p).sum(-1)
            return d.clamp_min(0)

    def similarity(self, d: Tensor) -> Tensor:
        """ProtoPNet's similarity log((d + 1) / (d + eps))."""
        return torch.log((d + 1) / (d + self.epsilon))

    def classify(self, min_distances: Tensor) -> Tensor:
        """Logits (B, K) from the per-prototype minimum distances (B, P), float32."""
        with torch.autocast(device_type=min_distances.device.type, enabled=False):
            return self.last_layer(self.similarity(min_distances.float()))


class PrototypeNetwork(nn.Module):
    """Trunk -> add-on -> :class:`PrototypeHead`: what every prototype network shares.

    Submodules are made in the order trunk (given), add-on, head, so the state dict keys
    and the random draws of initialisation are the same for every subclass.
    ``channels_last`` converts the trunk's input to channels-last memory format (set it
    on CUDA). A subclass sets ``pool`` (one vector per input, or keep the map) and its
    default add-on depth and prototype dimension, and implements ``forward`` and
    ``push_candidates``.

    Args:
        trunk: the backbone.
        num_classes: K.
        prototypes_per_class: prototypes of each class.
        prototype_dim: D; None: the network's ``default_prototype_dim``.
        addon_layers: 1 or 2 (see :func:`make_addon`); None: ``default_addon_layers``.
        off_class_weight: last-layer weight from a prototype to the other classes.
        addon_init: ``default`` (PyTorch's) or ``kaiming`` (ProtoPNet's).
        seed: seed of the prototypes' initial values.
    """

    pool: bool = True
    default_prototype_dim: int = 128
    default_addon_layers: int = 1

    def __init__(
        self,
        trunk: Trunk,
        num_classes: int,
        *,
        prototypes_per_class: int = 10,
        prototype_dim: int | None = None,
        addon_layers: int | None = None,
        off_class_weight: float = -0.5,
        addon_init: str = "default",
        seed: int = 0,
    ) -> None:
        super().__init__()
        dim = self.default_prototype_dim if prototype_dim is None else prototype_dim
        layers = self.default_addon_layers if addon_layers is None else addon_layers
        self.trunk = trunk
        self.add_on = make_addon(
            trunk.out_channels, dim, layers, pool=self.pool, kaiming=addon_init == "kaiming"
        )
        self.head = PrototypeHead(
            num_classes, prototypes_per_class, dim, off_class_weight=off_class_weight, seed=seed
        )
        self.channels_last = False

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimiser group.

        Returns:
            trunk, add_on, prototypes and last_layer parameters.
        """
        return {
            "trunk": list(self.trunk.parameters()),
            "add_on": list(self.add_on.parameters()),
            "prototypes": [self.head.prototypes],
            "last_layer": list(self.head.last_layer.parameters()),
        }


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model
