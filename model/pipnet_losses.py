"""PIP-Net's losses (Nauta et al. 2023) on the two augmented views of each image.

With z_a, z_b the presence vectors (P,) of one location in view a and view b (softmax
outputs, so each sums to 1), p_a, p_b the pooled presence (B, P) of the views, y the
classifier output (B, K), m its normalization multiplier:

* align  L_A = -(1/2) [mean_n log(z_a,n . sg(z_b,n) + 1e-12) + mean_n log(z_b,n . sg(z_a,n)
  + 1e-12)] over all n = B * h * w locations; sg = stop-gradient. The two halves have the
  same value (the dot product is symmetric); they differ in where the gradient flows.
  Identical one-hot views give 0.
* tanh   L_T = -(1/2) [mean_p log(tanh(sum_b p_a[b, p]) + 1e-8) + the same for p_b]: every
  prototype present somewhere in the batch; about 0 when every prototype's sum is large,
  a prototype absent everywhere adds -log(tanh(0) + 1e-8) / P = 18.42 / P.
* class  L_C = NLL(log_softmax(log(1 + y^m)), labels) over both views (2B rows), mean
  (optionally class-weighted, torch's weighted mean, as the reference's cross-entropy);
  no label smoothing (neither the original nor the reference uses any).

Phases (the original's train.py, main.py):

* ``pretrain``: L = w_A * L_A + 5 * L_T, w_A = e / E_pre (e = 1..E_pre the 1-based
  pretraining epoch), no class loss (the classifier is not trained);
* ``finetune`` (the first 3 training epochs after pretraining, only the classifier
  trains): L = 2 * L_C;
* ``train`` (``frozen`` epochs included): L = 5 * L_A + 2 * L_T + 2 * L_C.

The reference of the paper we reproduce (uos-sis/quanproto) uses the same coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.pipnet import PresenceOutput

PHASES = ("pretrain", "finetune", "frozen", "train")


@dataclass(frozen=True)
class PIPNetLossWeights:
    """Coefficients of the loss terms (the original's and the reference's defaults).

    ``pretrain_align``: the largest align weight of pretraining, reached in its last epoch
    (ramped linearly from 1 / E_pre); ``pretrain_tanh``: the tanh weight of pretraining.
    """

    align: float = 5.0
    tanh: float = 2.0
    classification: float = 2.0
    pretrain_align: float = 1.0
    pretrain_tanh: float = 5.0
    align_eps: float = 1e-12
    tanh_eps: float = 1e-8

    def for_phase(self, phase: str, epoch: int = 0, pretrain_epochs: int = 10) -> PhaseWeights:
        """The weights of one epoch; ``epoch`` is 0-based within the phase.

        Pretraining's align weight is (epoch + 1) / pretrain_epochs * pretrain_align (the
        original's 1-based e / E_pre).
        """
        if phase == "pretrain":
            ramp = (epoch + 1) / max(pretrain_epochs, 1)
            return PhaseWeights(ramp * self.pretrain_align, self.pretrain_tanh, 0.0)
        if phase == "finetune":
            return PhaseWeights(0.0, 0.0, self.classification)
        if phase in ("frozen", "train"):
            return PhaseWeights(self.align, self.tanh, self.classification)
        raise ValueError(f"unknown phase {phase!r} ({' | '.join(PHASES)})")


@dataclass(frozen=True)
class PhaseWeights:
    """The weights of the three terms in one epoch."""

    align: float
    tanh: float
    classification: float


def pipnet_phase(
    epoch: int, pretrain_epochs: int = 10, finetune_epochs: int = 3, freeze_epochs: int = 10
) -> tuple[str, int]:
    """(phase, 0-based epoch within the phase) of a 0-based global epoch, as the original.

    Pretraining epochs first; then training, whose first ``finetune_epochs`` are
    ``finetune`` (only when there was pretraining), its epochs up to ``freeze_epochs``
    (1-based, inclusive) ``frozen`` and the rest ``train``.
    """
    if epoch < pretrain_epochs:
        return "pretrain", epoch
    local = epoch - pretrain_epochs
    if pretrain_epochs > 0 and local < finetune_epochs:
        return "finetune", local
    return ("frozen" if local + 1 <= freeze_epochs else "train"), local


def split_views(out: PresenceOutput) -> tuple[PresenceOutput, PresenceOutput]:
    """The outputs of view a and view b from one forward of ``torch.cat([views_a, views_b])``
    (the original forwards both views as one batch, so BatchNorm sees both)."""
    if out.logits.shape[0] % 2:
        raise ValueError(f"an even batch of two views expected, got {out.logits.shape[0]} rows")
    halves = [t.chunk(2) if t is not None else (None, None) for t in out]
    return PresenceOutput(*(h[0] for h in halves)), PresenceOutput(*(h[1] for h in halves))


def _locations(maps: Tensor) -> Tensor:
    """(B, P, h, w) -> (B * h * w, P): one presence vector per location."""
    return maps.flatten(2).transpose(1, 2).reshape(-1, maps.shape[1])


def align_loss(maps_a: Tensor, maps_b: Tensor, eps: float = 1e-12) -> Tensor:
    """Symmetric align loss between the presence maps (B, P, h, w) of two views."""
    za, zb = _locations(maps_a.float()), _locations(maps_b.float())
    a_to_b = -torch.log((za * zb.detach()).sum(1) + eps).mean()
    b_to_a = -torch.log((zb * za.detach()).sum(1) + eps).mean()
    return (a_to_b + b_to_a) / 2


def tanh_loss(pooled_a: Tensor, pooled_b: Tensor, eps: float = 1e-8) -> Tensor:
    """-mean_p log(tanh(sum over the batch of p[:, p]) + eps), averaged over the two views."""

    def one(pooled: Tensor) -> Tensor:
        return -torch.log(torch.tanh(pooled.float().sum(0)) + eps).mean()

    return (one(pooled_a) + one(pooled_b)) / 2


def class_log_probs(logits: Tensor, multiplier: Tensor | float) -> Tensor:
    """log_softmax(log(1 + y^m)): the original's class log-probabilities, (B, K)."""
    return F.log_softmax(torch.log1p(logits.float() ** multiplier), dim=1)


def class_loss(
    logits: Tensor,
    labels: Tensor,
    multiplier: Tensor | float = 2.0,
    class_weight: Tensor | None = None,
) -> Tensor:
    """NLL of :func:`class_log_probs` (torch's (weighted) mean over the rows)."""
    if class_weight is not None:
        class_weight = class_weight.to(device=logits.device, dtype=torch.float32)
    return F.nll_loss(class_log_probs(logits, multiplier), labels, weight=class_weight)


def pipnet_loss(
    out_a: PresenceOutput,
    out_b: PresenceOutput,
    labels: Tensor,
    weights: PIPNetLossWeights,
    phase: str,
    *,
    epoch: int = 0,
    pretrain_epochs: int = 10,
    multiplier: Tensor | float = 2.0,
    class_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The weighted total and its parts as floats (one device sync) for logging.

    The term weights are ``weights.for_phase(phase, epoch, pretrain_epochs)`` (``epoch``
    0-based within the phase); ``multiplier``: the model's
    ``classifier.normalization_multiplier``. The class loss is over both views (labels repeated). Terms a phase leaves out (class loss in
    pretraining, align and tanh in fine-tuning) are reported but computed without
    gradient and not added to the total.
    """
    coef = weights.for_phase(phase, epoch, pretrain_epochs)
    with torch.set_grad_enabled(torch.is_grad_enabled() and phase != "finetune"):
        align = align_loss(out_a.maps, out_b.maps, weights.align_eps)
        tanh = tanh_loss(out_a.pooled, out_b.pooled, weights.tanh_eps)
    with torch.set_grad_enabled(torch.is_grad_enabled() and phase != "pretrain"):
        logits = torch.cat([out_a.logits, out_b.logits])
        cls = class_loss(logits, torch.cat([labels, labels]), multiplier, class_weight)
    if phase == "pretrain":
        total = coef.align * align + coef.tanh * tanh
    elif phase == "finetune":
        total = coef.classification * cls
    else:
        total = coef.align * align + coef.tanh * tanh + coef.classification * cls
    values = torch.stack([total.detach(), align.detach(), tanh.detach(), cls.detach()]).tolist()
    return total, dict(zip(["total", "align", "tanh", "classification"], values, strict=True))
