"""ProtoMask: prototypes compared with segment-crop views, one embedding per view."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from model.backbones import Trunk
from model.head import PrototypeHead, ProtoOutput, make_addon


class ProtoMask(nn.Module):
    """Views (B, M, 3, S, S) -> shared trunk (one batch of B*M) -> add-on (1x1 conv, global
    average pool, sigmoid) -> one D-vector per view -> squared L2 to every prototype ->
    minimum over the M views -> log similarity -> linear classifier.

    ``addon_layers`` 1 is the reference's add-on (conv C -> D); 2 inserts ProtoPNet's
    ReLU + conv(D -> D) before the pooling. ``channels_last`` converts the flattened views
    to channels-last memory format before the trunk (set it on CUDA).
    """

    def __init__(self, trunk: Trunk, num_classes: int, *, prototypes_per_class: int = 10,
                 prototype_dim: int = 1280, addon_layers: int = 1,
                 off_class_weight: float = -0.5, addon_init: str = "default",
                 seed: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.add_on = make_addon(trunk.out_channels, prototype_dim, addon_layers, pool=True,
                                 kaiming=addon_init == "kaiming")
        self.head = PrototypeHead(num_classes, prototypes_per_class, prototype_dim,
                                  off_class_weight=off_class_weight, seed=seed)
        self.channels_last = False

    def embed(self, views: Tensor) -> Tensor:
        """View embeddings (B, M, D) of views (B, M, 3, S, S)."""
        if views.dim() != 5:
            raise ValueError(f"ProtoMask expects views (B, M, 3, S, S), got {tuple(views.shape)}")
        b, m = views.shape[:2]
        x = views.flatten(0, 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.add_on(self.trunk(x)).reshape(b, m, -1)

    def forward(self, views: Tensor, return_embeddings: bool = False) -> ProtoOutput:
        """Logits, min distances over views, matched view per prototype, all distances."""
        z = self.embed(views)
        d = self.head.distances(z).transpose(1, 2)  # (B, P, M)
        min_d, matched = d.min(dim=2)
        return ProtoOutput(self.head.classify(min_d), min_d, matched, d,
                           z if return_embeddings else None)

    def push_candidates(self, views: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Push candidates (B, M, D) and their grid (M,): one per view."""
        z = self.embed(views)
        return z, (z.shape[1],)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimiser group: trunk, add_on, prototypes, last_layer."""
        return {"trunk": list(self.trunk.parameters()), "add_on": list(self.add_on.parameters()),
                "prototypes": [self.head.prototypes],
                "last_layer": list(self.head.last_layer.parameters())}
