"""Saliency of one prototype on one input: PRP (LRP rules through trunk and add-on, with
zennit) or input x gradient, batched; paste-back and resizing onto the image canvas.

**What is explained.** A row of a batch is one (input, prototype) pair: an input x (a view
for ProtoMask, the resized full image for ProtoPNet) and a prototype vector p. The
explained output is the prototype's similarity on that input, ProtoPNet's
``s = log((d + 1) / (d + 1e-4))`` with ``d = ||z - p||^2``, where z is

* ProtoMask: the view's embedding ``sigmoid(avgpool(conv1x1(trunk(x))))`` (D,);
* ProtoPNet: the best-matching location of the add-on map (D, h, w): s is the maximum over
  locations of the per-location similarity, so all relevance enters at that location
  (winner takes all, as max pooling in LRP).

Rows are independent (eval mode, no batch statistics), so a batch gives exactly the maps
of its rows computed one by one.

**PRP** (Gautam et al. 2022, "This looks more like that"; the reference runs its code): LRP
starts with relevance R = s (the similarity value) at the output. The similarity layer is
not a linear map, so PRP replaces its backward by a fixed rule: channel c of z receives

    R_c = R * w_c / sum_c' w_c',    w_c = 1 / (((z_c - p_c)^2)^2 + 1e-12),

i.e. the relevance goes to the channels in which the embedding is closest to the prototype
(the weight is the inverse squared per-channel squared distance, as in the PRP code the
reference uses). Relevance is conserved: sum_c R_c = s. From z downwards, zennit's rules:
the sigmoid and every other activation pass relevance through, average pooling and the
skip-connection sums (canonised into a ``Sum`` module) split it in proportion to their
inputs, BatchNorm is merged into the preceding convolution (canonizer), convolutions use
ZPlus (alpha 1, beta 0), linear layers Epsilon, and the first convolution, by
``lrp_composite``:

* ``epsilon_plus_box`` (default, the reference's rules): ZBox with the bounds of the
  ImageNet-normalised pixel range;
* ``epsilon_gamma_box``: zennit's EpsilonGammaBox (ZBox first, Gamma 0.25 elsewhere);
* ``epsilon_plus_flat``: zennit's EpsilonPlusFlat (Flat first layer).

The pixel map is the relevance summed over the three colour channels (signed; the metrics
read its positive part). **gradient**: input x gradient of the true similarity (plain
autograd, no rule), summed over channels.

**Canvas.** :func:`paste_back` puts a view's map, resized to its box (inclusive
x_min..x_max, y_min..y_max) into an image-sized canvas of zeros; :func:`resize_maps`
brings the baseline's map from its square input back to the image size;
:func:`upsampled_similarity` is ProtoPNet's classic explanation, the similarity map over
locations upsampled (bicubic) to the image.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonGammaBox,
    EpsilonPlusFlat,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.core import Hook, Stabilizer
from zennit.layer import Sum
from zennit.rules import ClampMod, Epsilon, ZBox
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import Convolution

from pipeline.view_datasets import IMAGENET_MEAN, IMAGENET_STD

METHODS = ("prp", "gradient")
COMPOSITES = ("epsilon_plus_box", "epsilon_gamma_box", "epsilon_plus_flat")
SIMILARITY_EPSILON = 1e-4
PRP_STABILIZER = 1e-12
# Biases (including those of merged BatchNorms) take no relevance, as in the reference
# ("conv2d_ignorebias"): relevance is conserved from the similarity down to the pixels.
ZERO_PARAMS = ("bias",)


# ----------------------------------------------------------------- similarity layer
def log_similarity(d: Tensor, epsilon: float = SIMILARITY_EPSILON) -> Tensor:
    """ProtoPNet's similarity of a squared distance."""
    return torch.log((d + 1) / (d + epsilon))


class PRPSimilarity(torch.autograd.Function):
    """Similarity of embeddings z (N, D, *spatial) to prototypes p (N, D) -> (N, *spatial),
    with PRP's relevance rule as its backward (see the module doc)."""

    @staticmethod
    def forward(ctx, z: Tensor, p: Tensor, epsilon: float) -> Tensor:  # type: ignore[override]
        pp = p.reshape(p.shape + (1,) * (z.dim() - 2))
        diff2 = (z - pp) ** 2
        ctx.save_for_backward(diff2)
        return log_similarity(diff2.sum(1), epsilon)

    @staticmethod
    def backward(ctx, relevance: Tensor):  # type: ignore[override]
        (diff2,) = ctx.saved_tensors
        w = 1.0 / (diff2.double() ** 2 + PRP_STABILIZER)
        share = (w / w.sum(1, keepdim=True)).to(relevance.dtype)
        return relevance.unsqueeze(1) * share, None, None


class PrototypeSimilarity(nn.Module):
    """trunk -> add-on -> similarity to a given prototype per row (N,), for attribution.

    ``pooled``: the add-on ends in a vector per input (ProtoMask) or a map (ProtoPNet, whose
    similarity is the maximum over locations). Set :attr:`targets` (N, D) before a call;
    ``prp`` selects PRP's backward for the similarity layer (else the true gradient).
    """

    def __init__(self, trunk: nn.Module, add_on: nn.Module, pooled: bool) -> None:
        super().__init__()
        self.trunk = trunk
        self.add_on = add_on
        self.pooled = pooled
        self.targets: Optional[Tensor] = None
        self.prp = True

    def forward(self, x: Tensor) -> Tensor:
        z = self.add_on(self.trunk(x))
        p = self.targets.to(z.dtype)
        if self.prp:
            s = PRPSimilarity.apply(z, p, SIMILARITY_EPSILON)
        else:
            pp = p.reshape(p.shape + (1,) * (z.dim() - 2))
            s = log_similarity(((z - pp) ** 2).sum(1))
        if not self.pooled:
            s = s.flatten(1).amax(1)
        return s


# ---------------------------------------------------------------------------- rules
class ZPlusRule(Hook):
    """zennit's ZPlus rule (alpha 1, beta 0) with the biases zeroed, computed without the
    work that is known to be zero: where a layer's input has no negative entry (after a
    ReLU), the ``x- W-`` half contributes nothing and is skipped. Same result as
    ``zennit.rules.ZPlus(zero_params=["bias"])`` (tests compare them), about 25 % faster on
    EfficientNet, whose depthwise and projection convolutions follow ReLU6.

        R_in = x+ * (W+^T s) + x- * (W-^T s),  s = R_out / stab(W+ x+ + W- x-)
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__()
        self.stabilizer = stabilizer
        self._stabilize = Stabilizer.ensure(stabilizer)

    def copy(self) -> ZPlusRule:
        return ZPlusRule(self.stabilizer)

    def forward(self, module: nn.Module, input, output) -> None:
        self.stored_tensors["input"] = input

    def backward(self, module: nn.Module, grad_input, grad_output):
        x = self.stored_tensors["input"][0].detach()
        relevance = grad_output[0]
        negative = bool((x < 0).any())
        with torch.enable_grad():
            inputs = [x.clamp(min=0).requires_grad_(True)]
            with ClampMod(min=0.0, zero_params=list(ZERO_PARAMS))(module) as modified:
                z = modified.forward(inputs[0])
            if negative:
                inputs.append(x.clamp(max=0).requires_grad_(True))
                with ClampMod(max=0.0, zero_params=list(ZERO_PARAMS))(module) as modified:
                    z = z + modified.forward(inputs[1])
            grads = torch.autograd.grad(z, inputs, relevance / self._stabilize(z))
        out = sum(i.detach() * g for i, g in zip(inputs, grads, strict=True))
        return tuple(out if g is not None and g.shape == out.shape else None for g in grad_input)


# ----------------------------------------------------------------------- canonizers
def _is_mbconv_with_skip(module: nn.Module) -> bool:
    args = getattr(module, "_block_args", None)
    return (
        type(module).__name__ == "MBConvBlock"
        and args is not None
        and args.id_skip
        and _stride_one(args.stride)
        and args.input_filters == args.output_filters
    )


def _stride_one(stride) -> bool:
    return all(int(s) == 1 for s in (stride if isinstance(stride, (list, tuple)) else [stride]))


class MBConvSkipCanonizer(AttributeCanonizer):
    """EfficientNet(-Lite) MBConv blocks: the skip connection ``x + inputs`` becomes a ``Sum``
    module, so LRP splits relevance between the two branches in proportion to their
    contributions (without it, autograd would hand the full relevance to both)."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module):
        if _is_mbconv_with_skip(module):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> MBConvSkipCanonizer:
        return MBConvSkipCanonizer()

    @staticmethod
    def forward(self, inputs: Tensor, drop_connect_rate=None) -> Tensor:  # noqa: ARG004
        x = inputs
        if self._block_args.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        if self.has_se:
            squeezed = F.adaptive_avg_pool2d(x, 1)
            squeezed = self._se_expand(self._swish(self._se_reduce(squeezed)))
            x = torch.sigmoid(squeezed) * x
        x = self._bn2(self._project_conv(x))
        return self.canonizer_sum(torch.stack([inputs, x], dim=-1))


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's BatchNorm merge, with the merged BatchNorm an exact identity on every
    zennit and torch version, and its ``eps`` restored on removal.

    zennit 0.5 leaves ``eps`` as it was (the merged BatchNorm then divides by
    sqrt(1 + eps), not by 1); zennit 1.0 sets it to 0, which torch 2.11 rejects in eval mode
    too ("batch_norm eps must be positive"). A positive ``eps`` far below float32's
    resolution at 1 gives sqrt(1 + eps) == 1 exactly.
    """

    IDENTITY_EPS = 1e-20

    def register(self, linears, batch_norm) -> None:
        self.saved_eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = self.IDENTITY_EPS

    def remove(self) -> None:
        super().remove()
        self.batch_norm.eps = self.saved_eps


def canonizers() -> list:
    """BatchNorm merged into the preceding conv; residual sums of ResNet and EfficientNet as
    ``Sum`` modules. Each applies only where its pattern occurs."""
    return [
        ExactMergeBatchNorm(),
        ResNetBottleneckCanonizer(),
        ResNetBasicBlockCanonizer(),
        MBConvSkipCanonizer(),
    ]


def input_bounds(device: torch.device) -> tuple[Tensor, Tensor]:
    """(1, 3, 1, 1) lowest and highest ImageNet-normalised pixel values (pixels in [0, 1])."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def make_composite(name: str, device: torch.device):
    """The zennit composite ``name`` (see the module doc), with :func:`canonizers`."""
    low, high = input_bounds(device)
    zero = list(ZERO_PARAMS)
    if name == "epsilon_plus_box":
        layer_map = layer_map_base() + [
            (Convolution, ZPlusRule()),
            (nn.Linear, Epsilon(zero_params=zero)),
        ]
        first_map = [(Convolution, ZBox(low=low, high=high, zero_params=zero))]
        return SpecialFirstLayerMapComposite(layer_map, first_map, canonizers=canonizers())
    if name == "epsilon_gamma_box":
        return EpsilonGammaBox(low=low, high=high, zero_params=zero, canonizers=canonizers())
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(zero_params=zero, canonizers=canonizers())
    raise ValueError(f"unknown LRP composite {name!r} (known: {' | '.join(COMPOSITES)})")


# ------------------------------------------------------------------------ attribution
def prototype_saliency(
    explainer: PrototypeSimilarity,
    inputs: Tensor,
    prototypes: Tensor,
    *,
    method: str = "prp",
    composite: str = "epsilon_plus_box",
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Pixel maps (N, H, W) float32 and similarities (N,) of prototypes (N, D) on inputs
    (N, 3, H, W) (normalised), in chunks of ``batch_size`` rows, on the inputs' device.

    ``method`` prp | gradient (module doc). The model must be in eval mode.
    """
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r} (known: {' | '.join(METHODS)})")
    if explainer.trunk.training or explainer.add_on.training:
        raise ValueError("saliency needs the model in eval mode")
    maps, sims = [], []
    for start in range(0, len(inputs), batch_size):
        # channels-last: about 25 % faster convolutions on CPU (oneDNN) as on CUDA
        x = (
            inputs[start : start + batch_size]
            .detach()
            .clone(memory_format=torch.channels_last)
            .requires_grad_(True)
        )
        explainer.targets = prototypes[start : start + batch_size].detach()
        if method == "prp":
            explainer.prp = True
            comp = make_composite(composite, x.device)
            with torch.enable_grad(), comp.context(explainer) as model:
                s = model(x)
                (r,) = torch.autograd.grad(s, x, grad_outputs=s.detach())
        else:
            explainer.prp = False
            with torch.enable_grad():
                s = explainer(x)
                (g,) = torch.autograd.grad(s.sum(), x)
            r = g * x
        maps.append(r.detach().sum(1).float())
        sims.append(s.detach().float())
    explainer.targets = None
    if not maps:
        h, w = inputs.shape[-2:]
        return inputs.new_zeros((0, h, w)), inputs.new_zeros(0)
    return torch.cat(maps), torch.cat(sims)


# ----------------------------------------------------------------------------- canvas
def resize_maps(maps: Tensor, height: int, width: int) -> Tensor:
    """(N, h, w) -> (N, height, width), bilinear (antialiased when shrinking)."""
    if maps.shape[-2:] == (height, width):
        return maps
    shrink = height < maps.shape[-2] or width < maps.shape[-1]
    return F.interpolate(
        maps[:, None].float(),
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=shrink,
    )[:, 0]


def paste_back(maps: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """View maps (N, S, S) resized to their boxes (N, 4) inclusive (x0, y0, x1, y1) and put
    on zero canvases (N, height, width); nothing lands outside a box."""
    out = maps.new_zeros((len(maps), height, width), dtype=torch.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        x0, y0 = max(int(x0), 0), max(int(y0), 0)
        x1, y1 = min(int(x1), width - 1), min(int(y1), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        out[i, y0 : y1 + 1, x0 : x1 + 1] = resize_maps(maps[i : i + 1], y1 - y0 + 1, x1 - x0 + 1)[0]
    return out


def upsampled_similarity(
    distances: Tensor, height: int, width: int, epsilon: float = SIMILARITY_EPSILON
) -> Tensor:
    """ProtoPNet's explanation: similarity maps of distance maps (N, h, w), upsampled
    bicubically to (N, height, width) (clamped at 0, as bicubic can overshoot)."""
    sim = log_similarity(distances.float(), epsilon)
    up = F.interpolate(sim[:, None], size=(height, width), mode="bicubic", align_corners=False)
    return up[:, 0].clamp(min=0)


def randomised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` whose trunk parameters are randomised by shuffling the entries
    of every parameter tensor (a seeded permutation each; BatchNorm running statistics kept);
    add-on, prototypes and last layer are kept.

    Shuffling keeps each layer's weight distribution, so activations keep their scale and
    the saliency stays defined, while whatever the trunk learned is destroyed. (Re-running
    the layers' default initialisers instead makes the activations of a deep trunk vanish,
    e.g. to ~1e-8 at EfficientNet-Lite0's output, and every saliency map becomes 0.)
    """
    import copy

    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for param in clone.trunk.parameters():
            flat = param.detach().reshape(-1)
            order = torch.randperm(flat.numel(), generator=gen).to(flat.device)
            param.copy_(flat[order].reshape(param.shape))
    return clone
