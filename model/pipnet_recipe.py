"""PIP-Net's training recipe: self-supervised pretraining of the prototypes (align and
tanh losses on two augmented views of each image), then training with the classifier:
its first epochs train only the classifier (``finetune``), the next keep the trunk below
its last block frozen (``frozen``), the rest train everything (``train``); after every
update of a training phase the classifier is shrunk and clamped at 0, as the original.

Deviations from the original, for one train loop: AdamW with a StepLR over the training
epochs instead of cosine schedules (the reference also uses a StepLR); the validation
accuracy that selects the checkpoint is the plain forward's (no 0.1 presence cut-off).
"""

from __future__ import annotations

import torch
from torch import nn

from model.backbones import Trunk
from model.head import unwrap_model
from model.pipnet import PHASE_GROUPS, PIPNet
from model.pipnet_losses import PIPNetLossWeights, pipnet_loss, pipnet_phase, split_views
from model.recipes import Recipe, Step
from pipeline.model_params import PIPNetParams


class PIPNetRecipe(Recipe):
    """PIP-Net (Nauta et al. 2023) on full images; training batches hold two views."""

    name = "pipnet"
    pairs = True
    periods = dict(PHASE_GROUPS)

    def build(self, trunk: Trunk, num_classes: int, section: PIPNetParams, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the add-on's and classifier's initial values
            return PIPNet(trunk, num_classes, num_prototypes=section.num_prototypes)

    def schedule(self, section: PIPNetParams) -> list[Step]:
        total = section.pretrain_epochs + section.train_epochs
        return [
            Step(
                *pipnet_phase(
                    e, section.pretrain_epochs, section.finetune_epochs, section.freeze_epochs
                )
            )
            for e in range(total)
        ]

    def valid_after(self, steps: list[Step]) -> list[bool]:
        """Every state after pretraining: its classifier has been trained (PIP-Net's
        prototypes are channels of the trunk's output, there is no push)."""
        return [step.period != "pretrain" for step in steps]

    def optimizers(self, model: nn.Module, section: PIPNetParams) -> tuple[dict, dict]:
        """AdamW for pretraining, and one AdamW for every training phase (groups a phase
        freezes get no gradient and are not updated); a StepLR over the training epochs."""
        o = section.optim
        lr = {
            "trunk": o.trunk_lr,
            "trunk_top": o.block_lr,
            "trunk_last": o.block_lr,
            "add_on": o.add_on_lr,
            "classifier": o.classifier_lr,
        }
        groups = unwrap_model(model).parameter_groups()

        def adamw(names: tuple[str, ...]) -> torch.optim.Optimizer:
            chosen = [
                {"params": groups[g], "lr": lr[g], "weight_decay": o.weight_decay}
                for g in names
                if groups[g]
            ]
            return torch.optim.AdamW(chosen)

        pretrain, training = adamw(PHASE_GROUPS["pretrain"]), adamw(PHASE_GROUPS["train"])
        step_lr = torch.optim.lr_scheduler.StepLR(training, step_size=o.step_size, gamma=o.gamma)
        trained = ("finetune", "frozen", "train")
        return {"pretrain": pretrain, **{p: training for p in trained}}, {
            p: step_lr for p in trained
        }

    def loss(self, model, out, labels, step, section, class_weight):  # see Recipe.loss
        c = section.loss
        weights = PIPNetLossWeights(
            align=c.align,
            tanh=c.tanh,
            classification=c.classification,
            pretrain_tanh=c.pretrain_tanh,
        )
        out_a, out_b = split_views(out)
        total, parts = pipnet_loss(
            out_a,
            out_b,
            labels,
            weights,
            step.period,
            epoch=step.epoch,
            pretrain_epochs=section.pretrain_epochs,
            multiplier=unwrap_model(model).classifier.normalization_multiplier,
            class_weight=class_weight,
        )
        return total, parts, out_a.logits

    def after_update(self, model: nn.Module, step: Step) -> None:
        if step.period != "pretrain":
            unwrap_model(model).clamp_classifier_()
