"""The train section's model parts of the params schema: the shared trunk, and one section
per model with its own network shape, schedule, loss and optimiser settings.

Each model's defaults follow its own paper and original code, scaled to the embedded
default's budget (a few epochs on 400 synthetic images); README's "Models" section lists
the original settings next to these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.param_fields import Interval, param, section

BACKBONES = (
    "efficientnet_lite0",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "vgg16",
    "vgg19",
    "densenet121",
    "densenet161",
    "tiny_cnn",
)


@dataclass(frozen=True)
class ModelParams:
    """What every model shares: the trunk and the size of the full-image input."""

    backbone: str = param(
        "efficientnet_lite0",
        "Shared CNN trunk (efficientnet_lite0 ships "
        "its ImageNet weights; tiny_cnn is for tests and smoke runs).",
        choices=BACKBONES,
    )
    weights: str = param(
        "imagenet",
        "Trunk weights: imagenet (shipped for efficientnet_lite0, "
        "torchvision's cache otherwise), none, or a local file path.",
    )
    freeze_bn: bool = param(
        True,
        "Keep the trunk's BatchNorm in eval mode (ImageNet running "
        "statistics, affine weights still trained). EfficientNet-Lite0's "
        "BatchNorm momentum is 0.01: in a short run its running statistics "
        "lag the batch statistics it trains with, so evaluation and push "
        "see other features than training did.",
    )
    baseline_image_size: int = param(
        96,
        "Side of the full image fed to the baselines (ProtoPNet, ProtoPool, PIP-Net; the "
        "synthetic images' own size: nothing is lost to resizing).",
        interval=Interval(16, 1024),
    )


@dataclass(frozen=True)
class LossParams:
    """Loss coefficients of a ProtoPNet-style model."""

    cross_entropy: float = param(1.0, "Cross-entropy.", interval=Interval(0, 100))
    class_weighted: bool = param(
        True,
        "Weight the cross-entropy by inverse class frequency (N / (C n_c)); ProtoPNet's "
        "is unweighted.",
    )
    cluster: float = param(0.8, "Cluster cost.", interval=Interval(0, 100))
    separation: float = param(0.2, "Separation cost (subtracted).", interval=Interval(0, 100))
    diversity: float = param(
        0.2, "Diversity among a class's prototypes.", interval=Interval(0, 100)
    )
    l1: float = param(
        1e-3, "L1 on wrong-class last-layer weights (last-layer period).", interval=Interval(0, 100)
    )


@dataclass(frozen=True)
class OptimParams:
    """Learning rates per parameter group and the joint period's StepLR."""

    trunk_lr: float = param(1e-4, "Adam learning rate of the trunk.", interval=Interval(0, 1))
    add_on_lr: float = param(
        3e-3, "Adam learning rate of the add-on layers.", interval=Interval(0, 1)
    )
    prototypes_lr: float = param(
        3e-3, "Adam learning rate of the prototypes.", interval=Interval(0, 1)
    )
    last_layer_lr: float = param(
        3e-4, "Adam learning rate of the last layer.", interval=Interval(0, 1)
    )
    weight_decay: float = param(1e-3, "Weight decay of trunk and add-on.", interval=Interval(0, 1))
    step_size: int = param(
        5,
        "Joint period: multiply the learning rates by gamma every this many epochs.",
        interval=Interval(1, 10000),
    )
    gamma: float = param(0.5, "Joint period: the StepLR factor.", interval=Interval(0, 1))


@dataclass(frozen=True)
class PrototypeModelParams:
    """A ProtoPNet-style model (ProtoMask, ProtoPNet): class-specific prototypes, warm-up,
    joint epochs, push, last-layer epochs."""

    prototypes_per_class: int = param(10, "Prototypes per class.", interval=Interval(1, 100))
    prototype_dim: int = param(
        32,
        "Length of each prototype (and of the view embedding; the reference: 1280).",
        interval=Interval(1, 8192),
    )
    off_class_weight: float = param(
        -0.5,
        "Initial last-layer weight between a prototype and "
        "the other classes (ProtoPNet: -0.5; the reference: 0).",
        interval=Interval(-10, 10),
    )
    addon_init: str = param(
        "default",
        "Initialisation of the add-on's 1x1 convs: PyTorch's default, or ProtoPNet's kaiming "
        "normal (fan_out). With a 1280-channel trunk kaiming puts two thirds of the sigmoid "
        "outputs in saturation at the start, which slows a short run.",
        choices=("default", "kaiming"),
    )
    warmup_epochs: int = param(
        1, "Warm-up: trunk frozen, add-on and prototypes trained.", interval=Interval(0, 10000)
    )
    joint_epochs: int = param(5, "Joint: everything trained.", interval=Interval(0, 10000))
    push_every: int = param(
        0,
        "Push after every this many joint epochs, each push followed by the last-layer "
        "epochs (ProtoPNet: every 10); 0: one push, after the last joint epoch.",
        interval=Interval(0, 10000),
    )
    last_layer_epochs: int = param(
        2, "After each push: only the last layer trained.", interval=Interval(0, 10000)
    )
    loss: LossParams = section(LossParams, "Loss coefficients.")
    optim: OptimParams = section(OptimParams, "Optimisers and schedule.")


# ProtoPNet's own recipe (Chen et al. 2019, its settings.py and main.py): 128-d prototypes,
# unweighted CE, separation 0.08, no diversity term, L1 1e-4, last layer 1e-4, StepLR
# gamma 0.1; a push every 10 epochs of 1000 (here: every 3 of 5 joint epochs). One
# deliberate deviation: PyTorch's default add-on init, not kaiming (see addon_init).
PROTOPNET_RECIPE = dict(
    prototype_dim=128,
    push_every=3,
    last_layer_epochs=1,
    loss=LossParams(class_weighted=False, separation=0.08, diversity=0.0, l1=1e-4),
    optim=OptimParams(last_layer_lr=1e-4, gamma=0.1),
)


@dataclass(frozen=True)
class ProtoPoolLossParams:
    """ProtoPool's loss coefficients (its original code's terms)."""

    cross_entropy: float = param(1.0, "Cross-entropy.", interval=Interval(0, 100))
    class_weighted: bool = param(
        True, "Weight the cross-entropy by inverse class frequency (the reference does)."
    )
    cluster: float = param(0.8, "Cluster cost.", interval=Interval(0, 100))
    separation: float = param(0.08, "Separation cost (subtracted).", interval=Interval(0, 100))
    orthogonality: float = param(
        1.0, "Orthogonality of a class's slot assignments.", interval=Interval(0, 100)
    )
    l1: float = param(
        1e-3, "L1 on wrong-class last-layer weights (last-layer period).", interval=Interval(0, 100)
    )


@dataclass(frozen=True)
class ProtoPoolOptimParams:
    """ProtoPool's learning rates (Adam) and the joint period's StepLR."""

    warmup_lr: float = param(
        2e-3, "Warm-up: learning rate of add-on, prototypes and slots.", interval=Interval(0, 1)
    )
    trunk_lr: float = param(7.9e-5, "Joint: trunk.", interval=Interval(0, 1))
    add_on_lr: float = param(1.3e-4, "Joint: add-on.", interval=Interval(0, 1))
    prototypes_lr: float = param(9e-4, "Joint: prototypes and slots.", interval=Interval(0, 1))
    last_layer_lr: float = param(5e-4, "Last-layer epochs.", interval=Interval(0, 1))
    weight_decay: float = param(0.0, "Weight decay of trunk and add-on.", interval=Interval(0, 1))
    step_size: int = param(
        2, "Joint: multiply the rates by gamma every this many epochs.", interval=Interval(1, 10000)
    )
    gamma: float = param(0.5, "Joint: the StepLR factor.", interval=Interval(0, 1))


@dataclass(frozen=True)
class ProtoPoolParams:
    """ProtoPool (Rymarczyk et al. 2022): a pool of prototypes shared by the classes, each
    class filling its slots from the pool by a Gumbel-softmax assignment."""

    num_prototypes: int = param(
        20, "Prototypes in the pool (the reference, CUB: 205).", interval=Interval(2, 100000)
    )
    num_slots: int = param(5, "Slots per class (the reference: 10).", interval=Interval(1, 1000))
    prototype_dim: int = param(128, "Length of each prototype.", interval=Interval(1, 8192))
    addon_init: str = param(
        "default",
        "Add-on init: PyTorch's default, or the original's kaiming normal (see "
        "train.protomask.addon_init).",
        choices=("default", "kaiming"),
    )
    gumbel_epochs: int = param(
        6,
        "Epochs (warm-up and joint) over which the Gumbel-softmax sharpens to its final "
        "scale (the original: 30).",
        interval=Interval(1, 10000),
    )
    warmup_epochs: int = param(
        1,
        "Warm-up: trunk frozen, add-on, prototypes and slots trained.",
        interval=Interval(0, 10000),
    )
    joint_epochs: int = param(5, "Joint: trunk too.", interval=Interval(0, 10000))
    last_layer_epochs: int = param(
        2, "After the projection (push): only the last layer.", interval=Interval(0, 10000)
    )
    loss: ProtoPoolLossParams = section(ProtoPoolLossParams, "Loss coefficients.")
    optim: ProtoPoolOptimParams = section(ProtoPoolOptimParams, "Optimisers and schedule.")


@dataclass(frozen=True)
class PIPNetLossParams:
    """PIP-Net's loss weights."""

    align: float = param(
        5.0, "Alignment of the two views' presence maps.", interval=Interval(0, 100)
    )
    tanh: float = param(
        2.0, "Tanh loss (every prototype present somewhere).", interval=Interval(0, 100)
    )
    classification: float = param(2.0, "Classification loss.", interval=Interval(0, 100))
    pretrain_tanh: float = param(5.0, "Tanh loss in pretraining.", interval=Interval(0, 100))
    class_weighted: bool = param(
        True, "Weight the classification loss by inverse class frequency (the reference does)."
    )


@dataclass(frozen=True)
class PIPNetOptimParams:
    """PIP-Net's learning rates (AdamW) and the StepLR of its training epochs."""

    trunk_lr: float = param(3e-5, "The trunk below its last block.", interval=Interval(0, 1))
    block_lr: float = param(2e-4, "The trunk's last block.", interval=Interval(0, 1))
    add_on_lr: float = param(
        2e-3,
        "The 1x1 add-on (when there is one; the original: 10 x block).",
        interval=Interval(0, 1),
    )
    classifier_lr: float = param(0.05, "The classifier.", interval=Interval(0, 1))
    weight_decay: float = param(0.0, "Weight decay.", interval=Interval(0, 1))
    step_size: int = param(
        4, "Multiply the rates by gamma every this many epochs.", interval=Interval(1, 10000)
    )
    gamma: float = param(0.5, "The StepLR factor.", interval=Interval(0, 1))


@dataclass(frozen=True)
class PIPNetParams:
    """PIP-Net (Nauta et al. 2023): prototypes as channels of a softmax over the feature
    map, self-supervised pretraining of their presence, a sparse non-negative classifier."""

    num_prototypes: Optional[int] = param(
        None,
        "Prototypes (null: the trunk's channels, no add-on, as the original's default).",
        interval=Interval(1, 100000),
    )
    pretrain_epochs: int = param(
        1,
        "Pretraining of the prototypes (align and tanh losses only; the reference: 5).",
        interval=Interval(0, 10000),
    )
    train_epochs: int = param(
        5, "Training epochs after pretraining (the reference: 100).", interval=Interval(1, 10000)
    )
    finetune_epochs: int = param(
        1,
        "First training epochs that train only the classifier (the original: 3).",
        interval=Interval(0, 10000),
    )
    freeze_epochs: int = param(
        2,
        "Training epochs (counting from the first) with the trunk below its last block "
        "frozen (the original: 10 of 60).",
        interval=Interval(0, 10000),
    )
    loss: PIPNetLossParams = section(PIPNetLossParams, "Loss weights.")
    optim: PIPNetOptimParams = section(PIPNetOptimParams, "Optimisers and schedule.")
