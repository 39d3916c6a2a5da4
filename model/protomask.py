"""ProtoMask: prototypes compared with segment-crop views, one embedding per view."""

from __future__ import annotations

import torch
from torch import Tensor

from model.head import ProtoOutput, PrototypeNetwork


class ProtoMask(PrototypeNetwork):
    """Views (B, M, 3, S, S) -> shared trunk (one batch of B*M) -> add-on (1x1 conv, global
    average pool, sigmoid) -> one D-vector per view -> squared L2 to every prototype ->
    minimum over the M views -> log similarity -> linear classifier.

    ``addon_layers`` 1 is the reference's add-on (conv C -> D); 2 inserts ProtoPNet's
    ReLU + conv(D -> D) before the pooling. ``channels_last`` converts the flattened views
    to channels-last memory format before the trunk (set it on CUDA).
    """

    pool = True
    default_prototype_dim = 1280
    default_addon_layers = 1

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
        return ProtoOutput(
            self.head.classify(min_d), min_d, matched, d, z if return_embeddings else None
        )

    def push_candidates(self, views: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Push candidates (B, M, D) and their grid (M,): one per view."""
        z = self.embed(views)
        return z, (z.shape[1],)
