"""ProtoPool's training recipe: warm-up (trunk frozen; add-on, prototypes and slots),
joint (the trunk too; StepLR), the projection onto training patches (our push, through
the hard slot assignment), then last-layer epochs; the Gumbel-softmax scale of the slot
assignment grows each warm-up/joint epoch as the original's schedule."""

from __future__ import annotations

import torch
from torch import nn

from model.backbones import Trunk
from model.head import unwrap_model
from model.protopool import ProtoPool, gumbel_scale
from model.protopool_losses import ProtoPoolLossWeights, protopool_loss
from model.recipes import Recipe, Step, adam_per_period, push_cycle
from pipeline.model_params import ProtoPoolParams

HARD_SCALE = 1e4  # the original's scale after training: the assignment is one-hot


class ProtoPoolRecipe(Recipe):
    """ProtoPool (Rymarczyk et al. 2022) on full images."""

    name = "protopool"
    periods = {
        "warmup": ("add_on", "prototypes", "slots"),
        "joint": ("trunk", "add_on", "prototypes", "slots"),
        "last_layer": ("last_layer",),
    }

    def keeps_valid(self, period: str) -> bool:
        """Slots moving changes which classes use a prototype, so only the last layer
        keeps a projected state valid."""
        return self.periods[period] == ("last_layer",)

    def build(
        self, trunk: Trunk, num_classes: int, section: ProtoPoolParams, seed: int
    ) -> nn.Module:
        return ProtoPool(
            trunk,
            num_classes,
            num_prototypes=section.num_prototypes,
            num_slots=section.num_slots,
            prototype_dim=section.prototype_dim,
            addon_init=section.addon_init,
            seed=seed,
        )

    def schedule(self, section: ProtoPoolParams) -> list[Step]:
        steps = [Step("warmup", e) for e in range(section.warmup_epochs)]
        steps += [Step("joint", e) for e in range(section.joint_epochs)]
        return steps + push_cycle(0, 0, section.last_layer_epochs)

    def optimizers(self, model: nn.Module, section: ProtoPoolParams) -> tuple[dict, dict]:
        o = section.optim
        warm = {"add_on": o.warmup_lr, "prototypes": o.warmup_lr, "slots": o.warmup_lr}
        joint = {
            "trunk": o.trunk_lr,
            "add_on": o.add_on_lr,
            "prototypes": o.prototypes_lr,
            "slots": o.prototypes_lr,
        }
        decay = {"trunk": o.weight_decay, "add_on": o.weight_decay}
        optimizers = {
            **adam_per_period(model, {"warmup": self.periods["warmup"]}, warm, decay),
            **adam_per_period(model, {"joint": self.periods["joint"]}, joint, decay),
            **adam_per_period(
                model, {"last_layer": ("last_layer",)}, {"last_layer": o.last_layer_lr}, {}
            ),
        }
        step_lr = torch.optim.lr_scheduler.StepLR(
            optimizers["joint"], step_size=o.step_size, gamma=o.gamma
        )
        return optimizers, {"joint": step_lr}

    def start_epoch(self, model: nn.Module, step: Step, section: ProtoPoolParams) -> None:
        """The slot assignment's Gumbel scale: the original's schedule over the warm-up and
        joint epochs (its first training epoch is its epoch 1), one-hot afterwards."""
        inner = unwrap_model(model)
        if step.period == "last_layer":
            inner.gumbel_scale = HARD_SCALE
            return
        index = step.epoch + (section.warmup_epochs if step.period == "joint" else 0)
        inner.gumbel_scale = gumbel_scale(index + 1, interval=section.gumbel_epochs)

    def loss(self, model, out, labels, step, section, class_weight):  # see Recipe.loss
        c = section.loss
        weights = ProtoPoolLossWeights(
            cross_entropy=c.cross_entropy,
            cluster=c.cluster,
            separation=c.separation,
            orthogonality=c.orthogonality,
            l1=c.l1,
        ).for_period(step.period)
        total, parts = protopool_loss(out, labels, model, weights, class_weight)
        return total, parts, out.logits
