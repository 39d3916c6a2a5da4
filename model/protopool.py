"""ProtoPool (Rymarczyk et al., ECCV 2022): a shared pool of patch prototypes, each class
choosing S of them through a differentiable (Gumbel-softmax) slot assignment.

Images (B, 3, H, W) -> trunk -> add-on (1x1 conv, sigmoid) -> map (B, D, h, w) -> squared
L2 of every location to each of the P pool prototypes (B, P, h, w) -> per prototype the
minimum d_min and the mean d_avg over locations -> mixed through the slot presence
A (K, S, P) (each row a distribution over the pool) into class-slot distances
m[b, k, s] = sum_p A[k, s, p] d[b, p] -> similarity g(m) = log((m + 1) / (m + eps)),
focal: g(m_min) - g(m_avg) -> last layer (K*S -> K, slot k*S + s belongs to class k).

Presence A from the raw slot logits R (K, S, P):
* training, scale s == 0: softmax(R) over the pool (the original's epoch 0);
* training, s > 0: softmax((s R + G) / tau) over the pool, G Gumbel noise drawn in the
  original's (K, P, S) memory order, so a seed gives the original's sample; tau 0.5;
* eval (or ``hard=True``): one-hot of argmax_p R[k, s, p] (the original evaluates with
  s = 1e4, which is this argmax up to noise).
``R`` is initialised as the original's xavier normal of a (K, P, S) tensor, transposed.
The scale s is annealed by the caller with :func:`gumbel_scale` (set ``model.gumbel_scale``
or pass ``gumbel_scale=`` to forward); the loss reads the presence of the last forward
from ``model.head.last_presence``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.head import ProtoOutput, PrototypeHead, make_addon

if TYPE_CHECKING:
    from model.backbones import Trunk

GUMBEL_TAU = 0.5  # the original's gumbel_softmax tau (quanproto: 1.0)


def gumbel_scale(
    epoch: int,
    *,
    interval: int = 30,
    start: float = 1.3,
    end: float = 1000.0,
    floor: bool = False,
) -> float:
    """The original's multiplier of the slot logits at ``epoch``.

    s(e) = start * sqrt(alpha * e), alpha = (end / start)^2 / interval, for e < interval
    (i.e. end * sqrt(e / interval)); ``end`` from e = interval on. s = 0 (epoch 0) means
    a plain softmax. ``floor``: clamp at >= start (quanproto: start = 1 / tau_start = 1,
    end = 1 / tau_end = 1000, interval = decreasing_interval = 50 for CUB).
    """
    if epoch >= interval:
        return float(end)
    value = start * math.sqrt((end / start) ** 2 / interval * epoch)
    return max(value, start) if floor else value


def gumbel_temperature(epoch: int, *, tau: float = GUMBEL_TAU, **schedule: float) -> float:
    """Effective temperature of the slot logits, tau / s(e) (inf where s = 0).

    Only for logging: the noise is not scaled (softmax((s R + G) / tau)), so the forward
    takes the scale :func:`gumbel_scale`, not this temperature.
    """
    scale = gumbel_scale(epoch, **schedule)  # type: ignore[arg-type]
    return math.inf if scale == 0 else tau / scale


def sample_presence(raw: Tensor, scale: float, tau: float = GUMBEL_TAU) -> Tensor:
    """Soft presence (K, S, P) from logits R (K, S, P): softmax(R) if scale == 0, else
    softmax((scale R + G) / tau), G ~ Gumbel(0, 1) drawn in (K, P, S) order."""
    if scale == 0:
        return torch.softmax(raw, dim=-1)
    draws = torch.empty(raw.shape[0], raw.shape[2], raw.shape[1], device=raw.device)
    noise = -draws.exponential_().log().transpose(1, 2).to(raw.dtype)
    return torch.softmax((raw * scale + noise) / tau, dim=-1)


def hard_presence(raw: Tensor) -> Tensor:
    """One-hot (K, S, P) of argmax over the pool of the slot logits R (K, S, P)."""
    return F.one_hot(raw.argmax(dim=-1), raw.shape[-1]).to(raw.dtype)


def log_similarity(d: Tensor, epsilon: float = 1e-4) -> Tensor:
    """log((d + 1) / (d + eps))."""
    return torch.log((d + 1) / (d + epsilon))


def slot_similarities(
    min_distances: Tensor,
    avg_distances: Optional[Tensor],
    presence: Tensor,
    *,
    epsilon: float = 1e-4,
    mix_distances: bool = True,
) -> Tensor:
    """Class-slot similarities (B, K, S) from per-prototype distances (B, P).

    mix_distances (the original): g(A d_min) - g(A d_avg); else (quanproto) the
    similarities are mixed: A (g(d_min) - g(d_avg)). ``avg_distances`` None: no focal
    term (g(A d_min) or A g(d_min)).
    """

    def mix(values: Tensor) -> Tensor:
        return torch.einsum("bp,ksp->bks", values, presence)

    if mix_distances:
        sim = log_similarity(mix(min_distances), epsilon)
        if avg_distances is not None:
            sim = sim - log_similarity(mix(avg_distances), epsilon)
        return sim
    sim = log_similarity(min_distances, epsilon)
    if avg_distances is not None:
        sim = sim - log_similarity(avg_distances, epsilon)
    return mix(sim)


class ProtoPoolHead(nn.Module):
    """Pool prototypes (P, D), slot logits (K, S, P), similarity and last layer (K*S -> K).

    ``last_presence`` holds the presence (K, S, P) of the last forward (with its graph),
    for the loss. ``class_prototype_table`` follows the current hard assignment, so
    :func:`model.push.push_prototypes` projects each prototype onto the classes using it.
    """

    def __init__(
        self,
        num_classes: int,
        num_slots: int,
        num_prototypes: int,
        dim: int,
        *,
        off_class_weight: float = 0.0,
        seed: int = 0,
        epsilon: float = 1e-4,
        tau: float = GUMBEL_TAU,
        focal: bool = True,
        mix_distances: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2 or num_slots < 1 or num_prototypes < num_slots or dim < 1:
            raise ValueError(
                f"need num_classes >= 2, 1 <= num_slots <= num_prototypes, dim >= 1; got "
                f"{num_classes}, {num_slots}, {num_prototypes}, {dim}"
            )
        self.num_classes, self.num_slots, self.dim = num_classes, num_slots, dim
        self.epsilon, self.tau = epsilon, tau
        self.focal, self.mix_distances = focal, mix_distances
        gen = torch.Generator().manual_seed(seed)
        self.prototypes = nn.Parameter(torch.rand(num_prototypes, dim, generator=gen))
        raw = torch.empty(num_classes, num_prototypes, num_slots)
        nn.init.xavier_normal_(raw, gain=1.0, generator=gen)
        self.slots = nn.Parameter(raw.transpose(1, 2).contiguous())  # (K, S, P)
        own = torch.arange(num_classes * num_slots) // num_slots
        self.register_buffer("prototype_class_identity", F.one_hot(own, num_classes).float())
        self.last_layer = nn.Linear(num_classes * num_slots, num_classes, bias=False)
        self.set_last_layer(off_class_weight)
        self.last_presence: Optional[Tensor] = None

    prototype_class_identity: Tensor  # (K*S, K): slot j -> class j // S (the original's name)

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    # the shared head's methods: they only read .prototypes, .epsilon, the identity and
    # .last_layer; set_last_layer: +1 from a slot to its class, off_class_weight elsewhere
    distances = PrototypeHead.distances
    similarity = PrototypeHead.similarity
    set_last_layer = PrototypeHead.set_last_layer

    def presence(self, scale: float = 0.0, hard: bool = False) -> Tensor:
        """Slot presence (K, S, P): hard one-hot argmax, or sampled (:func:`sample_presence`)."""
        if hard:
            return hard_presence(self.slots.detach())
        return sample_presence(self.slots, scale, self.tau)

    def assignment(self) -> Tensor:
        """(K, S) long: the pool prototype of every class slot (hard argmax)."""
        return self.slots.detach().argmax(dim=-1)

    def prototype_class_matrix(self) -> Tensor:
        """(P, K) bool: prototype p fills at least one slot of class k (hard assignment)."""
        used = torch.zeros(self.num_prototypes, self.num_classes, dtype=torch.bool)
        a = self.assignment().cpu()
        used[a.flatten(), torch.arange(self.num_classes).repeat_interleave(self.num_slots)] = True
        return used.to(self.prototypes.device)

    @property
    def prototype_classes(self) -> Tensor:
        """(P,) long: the lowest class using each prototype, -1 for an unused one."""
        used = self.prototype_class_matrix()
        first = used.long().argmax(dim=1)
        return torch.where(used.any(dim=1), first, torch.full_like(first, -1))

    def class_prototype_table(self) -> Tensor:
        """(K, Q) long: each class's distinct prototypes (hard assignment), padded with -1."""
        used = self.prototype_class_matrix().t().cpu()  # (K, P)
        q = max(1, int(used.sum(dim=1).max()))
        table = torch.full((self.num_classes, q), -1, dtype=torch.long)
        for k in range(self.num_classes):
            ids = used[k].nonzero().flatten()
            table[k, : len(ids)] = ids
        return table.to(self.prototypes.device)

    def prototype_weights(self) -> Tensor:
        """(K, P) last-layer weight per pool prototype under the hard assignment:
        W_eff[j, p] = sum_{k, s} W[j, k*S + s] [assignment[k, s] == p]."""
        w = self.last_layer.weight.detach()
        onehot = hard_presence(self.slots.detach()).to(w.dtype).flatten(0, 1)  # (K*S, P)
        return w @ onehot

    def classify(self, min_distances: Tensor, avg_distances: Tensor, presence: Tensor) -> Tensor:
        """Logits (B, K) from d_min, d_avg (B, P) and the presence (K, S, P), float32."""
        with torch.autocast(device_type=min_distances.device.type, enabled=False):
            sim = slot_similarities(
                min_distances.float(),
                avg_distances.float() if self.focal else None,
                presence.float(),
                epsilon=self.epsilon,
                mix_distances=self.mix_distances,
            )
            return self.last_layer(sim.flatten(1))


class ProtoPool(nn.Module):
    """Trunk -> add-on -> :class:`ProtoPoolHead`, the interface of the prototype networks.

    Args:
        trunk: the backbone.
        num_classes: K.
        num_prototypes: P, the pool (original CUB: 202; quanproto CUB: 205).
        num_slots: S slots per class (10).
        prototype_dim: D (original default 128, its CUB command 256; quanproto 128).
        addon_layers: 1 (the original's conv + sigmoid) or 2 (ProtoPNet's).
        off_class_weight: last-layer weight from a slot to the other classes (original 0).
        addon_init: ``kaiming`` (the original's) or ``default``.
        seed: seed of the prototypes' and slot logits' initial values.
        gumbel_tau: tau of the Gumbel-softmax (original 0.5, quanproto 1.0).
        focal: subtract the similarity of the mean distance (the original always does).
        mix_distances: mix distances then take similarities (original) or mix similarities
            (quanproto).
    """

    def __init__(
        self,
        trunk: Trunk,
        num_classes: int,
        *,
        num_prototypes: int = 202,
        num_slots: int = 10,
        prototype_dim: int = 128,
        addon_layers: int = 1,
        off_class_weight: float = 0.0,
        addon_init: str = "kaiming",
        seed: int = 0,
        gumbel_tau: float = GUMBEL_TAU,
        focal: bool = True,
        mix_distances: bool = True,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.add_on = make_addon(
            trunk.out_channels,
            prototype_dim,
            addon_layers,
            pool=False,
            kaiming=addon_init == "kaiming",
        )
        self.head = ProtoPoolHead(
            num_classes,
            num_slots,
            num_prototypes,
            prototype_dim,
            off_class_weight=off_class_weight,
            seed=seed,
            tau=gumbel_tau,
            focal=focal,
            mix_distances=mix_distances,
        )
        self.channels_last = False
        self.gumbel_scale = 0.0  # set per epoch by the caller (gumbel_scale(epoch))

    def features(self, images: Tensor) -> Tensor:
        """Add-on feature map (B, D, h, w) of images (B, 3, H, W)."""
        if images.dim() != 4:
            raise ValueError(f"ProtoPool expects images (B, 3, H, W), got {tuple(images.shape)}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.add_on(self.trunk(images))

    def forward(
        self,
        images: Tensor,
        return_embeddings: bool = False,
        *,
        gumbel_scale: Optional[float] = None,
        hard: Optional[bool] = None,
    ) -> ProtoOutput:
        """Logits, min distances over locations, matched location, the distance maps.

        ``gumbel_scale`` None: ``self.gumbel_scale``; ``hard`` None: hard in eval mode.
        """
        f = self.features(images)
        d = self.head.distances(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, P, h, w)
        flat = d.flatten(2)
        min_d, matched = flat.min(dim=2)
        scale = self.gumbel_scale if gumbel_scale is None else gumbel_scale
        presence = self.head.presence(scale, hard=not self.training if hard is None else hard)
        self.head.last_presence = presence
        logits = self.head.classify(min_d, flat.mean(dim=2), presence)
        return ProtoOutput(logits, min_d, matched, d, f if return_embeddings else None)

    def push_candidates(self, images: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Push candidates (B, h*w, D), one per feature-map location, and the grid (h, w)."""
        f = self.features(images)
        return f.flatten(2).transpose(1, 2), (f.shape[2], f.shape[3])

    def prototype_classes(self) -> list[list[int]]:
        """Per pool prototype, the classes whose slots it fills (hard assignment)."""
        used = self.head.prototype_class_matrix().cpu()
        return [row.nonzero().flatten().tolist() for row in used]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimiser group: trunk, add_on, prototypes, slots, last_layer."""
        return {
            "trunk": list(self.trunk.parameters()),
            "add_on": list(self.add_on.parameters()),
            "prototypes": [self.head.prototypes],
            "slots": [self.head.slots],
            "last_layer": list(self.head.last_layer.parameters()),
        }
