"""ProtoPNet baseline (Chen et al. 2019) on full images: patch prototypes on the feature map."""

from __future__ import annotations

import torch
from torch import Tensor

from model.head import ProtoOutput, PrototypeNetwork


class ProtoPNet(PrototypeNetwork):
    """Images (B, 3, H, W) -> trunk -> add-on (1x1 convs, sigmoid) -> map (B, D, h, w) ->
    squared L2 of every location to every prototype (B, P, h, w) -> minimum over locations
    (max-pooled similarity) -> log similarity -> linear classifier.

    Prototypes are stored (P, D) in the shared head (ProtoPNet's (P, D, 1, 1) squeezed).
    ``matched`` is the flat location index h * w_size + w; ``distances`` the (B, P, h, w)
    maps for the upsampled-similarity explanation. Add-on default: ProtoPNet's
    conv-ReLU-conv-sigmoid; ``addon_init`` "kaiming" gives ProtoPNet's kaiming normal
    (fan_out) init, "default" PyTorch's (see params train.protopnet.addon_init).
    """

    pool = False
    default_prototype_dim = 128
    default_addon_layers = 2

    def features(self, images: Tensor) -> Tensor:
        """Add-on feature map (B, D, h, w) of images (B, 3, H, W)."""
        if images.dim() != 4:
            raise ValueError(f"ProtoPNet expects images (B, 3, H, W), got {tuple(images.shape)}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.add_on(self.trunk(images))

    def forward(self, images: Tensor, return_embeddings: bool = False) -> ProtoOutput:
        """Logits, min distances over locations, matched location, the distance maps."""
        f = self.features(images)
        d = self.head.distances(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, P, h, w)
        min_d, matched = d.flatten(2).min(dim=2)
        return ProtoOutput(
            self.head.classify(min_d), min_d, matched, d, f if return_embeddings else None
        )

    def push_candidates(self, images: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Push candidates (B, h*w, D), one per feature-map location, and the grid (h, w)."""
        f = self.features(images)
        return f.flatten(2).transpose(1, 2), (f.shape[2], f.shape[3])
