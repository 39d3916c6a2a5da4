"""PIP-Net (:mod:`model.pipnet`) as the evaluate stage sees a prototype network: its
presence score, its saliency (PRP with zennit, or input x gradient) and its classifier
as a prototype head.

**What is explained.** PIP-Net's prototype p is channel p of the softmax over the P
channels of the add-on map a = add_on(trunk(x)) (B, P, h, w):

    presence_p(l) = exp(a_p(l)) / sum_c exp(a_c(l)),    s_p(x) = max_l presence_p(l),

the pooled presence in [0, 1] (before the original's inference threshold 0.1, so weak
prototypes keep their order). s_p is the "similarity" of prototype p to the image: the
evaluate stage ranks prototypes by it and explains its top-k (the prototypes most active
in the image, as for the distance-based models; the original's local explanation ranks
by s_p * w[c, p] for the predicted class c instead, which would favour the prototypes of
one class and is not what the explainability metrics compare). So that
:func:`model.saliency.prototype_saliency` takes PIP-Net unchanged, the "prototype vector"
of p is the one-hot e_p in presence space (:attr:`PresenceHead.prototypes`) and
:class:`PresenceExplainer` computes s = max_l <e_p, presence(l)>.

**PRP.** Relevance starts as R = s at the output. The max over locations is winner takes
all (as max pooling in LRP and as ProtoPNet's best location). The softmax over channels
has no LRP rule in zennit (it is a function, not a module, so zennit would leave it to
autograd: relevance times the softmax's Jacobian, signed and not conserved). Our rule is
zennit's pass rule for element-wise activations applied channel-wise: the relevance of
presence_p(l) goes entirely to its own logit a_p(l),

    R[a_c(l)] = R [c == p] [l == l*],

i.e. the explanation shows what makes prototype p's logit large at its best location and
drops the competition through the normaliser (how small the other channels are), which
is a property of the other prototypes, not evidence for p. Relevance is conserved:
sum R[a] = s. From a downwards zennit's composite rules apply as for the other models
(:mod:`model.saliency`: the add-on 1x1 convolution is a convolution, ZPlus; nothing when
P equals the trunk's channels and the add-on is the identity). **gradient**: input x
gradient of the true s (autograd through the softmax), summed over colour channels.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.pipnet import WEIGHT_SHRINK, PIPNet, PresenceOutput


class PassSoftmax(torch.autograd.Function):
    """Presence of the target channel, sum_c t_c softmax(a)_c, from logits a (N, P, *sp)
    and one-hot targets t (N, P) -> (N, *sp); its backward hands the relevance R (N, *sp)
    to the target channel's logit: R[a_c] = t_c R (the module doc's rule)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        t = targets.reshape(targets.shape + (1,) * (logits.dim() - 2)).to(logits.dtype)
        ctx.save_for_backward(t)
        return (torch.softmax(logits, dim=1) * t).sum(1)

    @staticmethod
    def backward(ctx, relevance: Tensor):  # type: ignore[override]
        (t,) = ctx.saved_tensors
        return relevance.unsqueeze(1) * t, None


class PresenceExplainer(nn.Module):
    """trunk -> add-on -> softmax over prototypes -> max over locations of the target
    prototype's presence per row (N,), for attribution; the interface of
    :class:`model.saliency.PrototypeSimilarity`: set :attr:`targets` (N, P) one-hot
    before a call, ``prp`` selects :class:`PassSoftmax`'s backward (else the gradient)."""

    def __init__(self, trunk: nn.Module, add_on: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.add_on = add_on
        self.targets: Optional[Tensor] = None
        self.prp = True

    def forward(self, x: Tensor) -> Tensor:
        a = self.add_on(self.trunk(x))
        a = a.to(torch.promote_types(a.dtype, torch.float32))  # as PIP-Net: softmax in fp32
        t = self.targets.to(a.dtype)
        if self.prp:
            presence = PassSoftmax.apply(a, t)
        else:
            presence = (torch.softmax(a, dim=1) * t[:, :, None, None]).sum(1)
        return presence.flatten(1).amax(1)


class PresenceHead(nn.Module):
    """PIP-Net's classifier seen as a prototype head (what the evaluate stage reads).

    ``prototypes`` (P, P): the one-hot target of each prototype (module doc);
    ``similarity``: the identity on pooled presence; ``prototype_weights()`` (K, P): the
    classifier's effective weights relu(W); a prototype is *relevant* when one of its
    weights exceeds 1e-3 (PIP-Net's count); ``prototype_classes`` (P,): the class of its
    largest weight for a relevant prototype, -1 otherwise.
    """

    def __init__(self, classifier: nn.Module, num_prototypes: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("prototypes", torch.eye(num_prototypes), persistent=False)

    prototypes: Tensor

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    def similarity(self, pooled: Tensor) -> Tensor:
        """The pooled presence is the similarity."""
        return pooled

    def prototype_weights(self) -> Tensor:
        """(K, P) relu(W), the weights the classifier uses."""
        return self.classifier.effective_weight().detach()

    def relevant(self) -> Tensor:
        """(P,) bool: some class weight > 1e-3."""
        return (self.prototype_weights() > WEIGHT_SHRINK).any(dim=0)

    @property
    def prototype_classes(self) -> Tensor:
        """(P,) long: the class of each relevant prototype's largest weight, else -1."""
        best = self.prototype_weights().argmax(dim=0)
        return torch.where(self.relevant(), best, torch.full_like(best, -1))


class PresenceNetwork(nn.Module):
    """A PIP-Net with the interface the evaluate stage explains: ``trunk``, ``add_on``,
    ``head`` (:class:`PresenceHead`) and a forward on images alone.

    forward: the presence maps once; logits as the original's evaluation
    (``inference=True``: pooled presence below 0.1 zeroed before the classifier);
    ``pooled`` and ``matched`` the raw max over locations (no threshold, see the module
    doc).
    """

    def __init__(self, net: PIPNet) -> None:
        super().__init__()
        self.net = net
        self.head = PresenceHead(net.classifier, net.num_prototypes)

    @property
    def trunk(self) -> nn.Module:
        return self.net.trunk

    @property
    def add_on(self) -> nn.Module:
        return self.net.add_on

    def presence_maps(self, images: Tensor) -> Tensor:
        """(B, P, h, w) softmax presence maps."""
        return self.net.presence_maps(images)[0]

    def forward(self, images: Tensor, return_embeddings: bool = False) -> PresenceOutput:
        """``return_embeddings`` is the other networks' flag, for one call: the presence
        maps, which are PIP-Net's feature vectors in the FD metrics, are always returned."""
        maps = self.presence_maps(images)
        logits, _, _ = self.net.head(maps, inference=True)
        pooled, matched = maps.flatten(2).max(dim=2)
        return PresenceOutput(logits, pooled, matched, maps)


def upsampled_presence(maps: Tensor, height: int, width: int) -> Tensor:
    """PIP-Net's local explanation: presence maps (N, h, w) upsampled bicubically to
    (N, height, width), clamped to [0, 1] (bicubic can overshoot)."""
    up = F.interpolate(
        maps.float()[:, None], size=(height, width), mode="bicubic", align_corners=False
    )
    return up[:, 0].clamp(0.0, 1.0)
