"""How each kind of model is built and trained: its schedule of periods, the parameter
groups each period trains, its optimisers, its loss, and which states are valid models.

The train loop (model/training.py) is the same for every model; a :class:`Recipe` says
what differs. :data:`RECIPES` maps a model name (params section train.<name>, DVC matrix
item) to its recipe: ProtoMask and ProtoPNet here, ProtoPool and PIP-Net in their own
modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from model.backbones import Trunk
from model.head import unwrap_model
from model.losses import LossWeights, prototype_loss
from pipeline.model_inputs import model_kind
from pipeline.model_params import PrototypeModelParams
from pipeline.param_fields import as_dict


@dataclass(frozen=True)
class Step:
    """One unit of the schedule: an epoch of a period, or a push."""

    period: str
    epoch: int


class Recipe:
    """What one kind of model needs from the train loop (ProtoPNet-style by default).

    ``periods`` maps each training period to the parameter groups it trains (a push is a
    step of its own); ``pairs``: a training batch holds two augmented views of each image.
    Whether the model reads the whole image or the views is its entry in
    :data:`pipeline.model_inputs.KINDS`.
    """

    name = ""
    pairs = False
    periods: dict[str, tuple[str, ...]] = {
        "warmup": ("add_on", "prototypes"),
        "joint": ("trunk", "add_on", "prototypes"),
        "last_layer": ("last_layer",),
    }

    @property
    def full_image(self) -> bool:
        """The model reads the whole image (else the segment-crop views)."""
        return model_kind(self.name).full_image

    def build(self, trunk: Trunk, num_classes: int, section: Any, seed: int) -> nn.Module:
        raise NotImplementedError

    def schedule(self, section: Any) -> list[Step]:
        """Every step of a run, in order."""
        raise NotImplementedError

    def optimizers(self, model: nn.Module, section: Any) -> tuple[dict, dict]:
        """period -> optimiser, period -> its LR scheduler (stepped after each epoch)."""
        raise NotImplementedError

    def loss(
        self,
        model: nn.Module,
        out: Any,
        labels: Tensor,
        step: Step,
        section: Any,
        class_weight: Optional[Tensor],
    ) -> tuple[Tensor, dict[str, float], Tensor]:
        """(total, its parts as floats, the logits whose accuracy is logged)."""
        raise NotImplementedError

    def start_epoch(self, model: nn.Module, step: Step, section: Any) -> None:
        """Set what an epoch's forward depends on (e.g. a temperature); nothing here."""

    def after_update(self, model: nn.Module, step: Step) -> None:
        """Run after each optimiser step (e.g. a clamp); nothing here."""

    def keeps_valid(self, period: str) -> bool:
        """Whether a period leaves a valid (pushed) state valid: it trains none of the
        groups whose change moves prototypes off the training embeddings."""
        moving = {"trunk", "add_on", "prototypes"}
        return not set(self.periods[period]) & moving

    def valid_after(self, steps: list[Step]) -> list[bool]:
        """For each step, whether the state after it is a valid model (only these are
        selectable and evaluated): after a push, and after periods that keep it valid."""
        flags, valid = [], False
        for step in steps:
            valid = step.period == "push" or (valid and self.keeps_valid(step.period))
            flags.append(valid)
        return flags

    def set_trainable(self, model: nn.Module, period: str) -> None:
        """requires_grad for the groups the period trains; a frozen trunk keeps its BN
        statistics (the trunk trains when any of its groups does)."""
        inner = unwrap_model(model)
        trained = self.periods[period]
        inner.trunk.set_trainable(any(g.startswith("trunk") for g in trained))
        for name, params in inner.parameter_groups().items():
            for p in params:
                p.requires_grad_(name in trained)


def adam_per_period(
    model: nn.Module, periods: dict[str, tuple[str, ...]], lr: dict, decay: dict
) -> dict[str, torch.optim.Optimizer]:
    """One Adam per period over its groups, with each group's learning rate and decay."""
    groups = unwrap_model(model).parameter_groups()
    return {
        period: torch.optim.Adam(
            [{"params": groups[g], "lr": lr[g], "weight_decay": decay.get(g, 0.0)} for g in names]
        )
        for period, names in periods.items()
    }


class PrototypeRecipe(Recipe):
    """ProtoMask and ProtoPNet: warm-up, joint epochs with a push (then last-layer epochs)
    every ``push_every`` of them and after the last; the loss of model/losses.py."""

    def __init__(self, name: str) -> None:
        self.name = name

    def build(
        self, trunk: Trunk, num_classes: int, section: PrototypeModelParams, seed: int
    ) -> nn.Module:
        from model.protomask import ProtoMask
        from model.protopnet import ProtoPNet

        cls = ProtoPNet if self.full_image else ProtoMask
        return cls(
            trunk,
            num_classes,
            prototypes_per_class=section.prototypes_per_class,
            prototype_dim=section.prototype_dim,
            off_class_weight=section.off_class_weight,
            addon_init=section.addon_init,
            seed=seed,
        )

    def schedule(self, section: PrototypeModelParams) -> list[Step]:
        """Warm-up epochs, joint epochs with a push (then the last-layer epochs) after every
        ``push_every`` of them and after the last one; epochs numbered within their period
        across the run."""
        steps = [Step("warmup", e) for e in range(section.warmup_epochs)]
        every = section.push_every or max(section.joint_epochs, 1)
        pushes = last_layer = 0
        for e in range(section.joint_epochs):
            steps.append(Step("joint", e))
            if (e + 1) % every == 0 and e + 1 < section.joint_epochs:
                steps += push_cycle(pushes, last_layer, section.last_layer_epochs)
                pushes, last_layer = pushes + 1, last_layer + section.last_layer_epochs
        return steps + push_cycle(pushes, last_layer, section.last_layer_epochs)

    def optimizers(self, model: nn.Module, section: PrototypeModelParams) -> tuple[dict, dict]:
        o = section.optim
        lr = {
            "trunk": o.trunk_lr,
            "add_on": o.add_on_lr,
            "prototypes": o.prototypes_lr,
            "last_layer": o.last_layer_lr,
        }
        decay = {"trunk": o.weight_decay, "add_on": o.weight_decay}
        optimizers = adam_per_period(model, self.periods, lr, decay)
        joint = torch.optim.lr_scheduler.StepLR(
            optimizers["joint"], step_size=o.step_size, gamma=o.gamma
        )
        return optimizers, {"joint": joint}

    def loss(self, model, out, labels, step, section, class_weight):
        coef = {k: v for k, v in as_dict(section.loss).items() if k != "class_weighted"}
        weights = LossWeights(**coef).for_period(step.period)
        total, parts = prototype_loss(out, labels, unwrap_model(model).head, weights, class_weight)
        return total, parts, out.logits


def push_cycle(push: int, first_epoch: int, epochs: int) -> list[Step]:
    """One push and the last-layer epochs after it."""
    return [Step("push", push)] + [Step("last_layer", first_epoch + e) for e in range(epochs)]


def _registry() -> dict[str, Recipe]:
    from model.pipnet_recipe import PIPNetRecipe
    from model.protopool_recipe import ProtoPoolRecipe

    return {
        "protomask": PrototypeRecipe("protomask"),
        "protopnet": PrototypeRecipe("protopnet"),
        "protopool": ProtoPoolRecipe(),
        "pipnet": PIPNetRecipe(),
    }


RECIPES: dict[str, Recipe] = {}


def recipe(name: str) -> Recipe:
    """The recipe of model ``name`` (protomask | protopnet | protopool | pipnet)."""
    if not RECIPES:
        RECIPES.update(_registry())
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r} ({' | '.join(RECIPES)})")
    return RECIPES[name]
