"""A tiny synthetic project (dataset + images index, optionally masks and crops) for stage
tests, built in-process."""

from __future__ import annotations

import shutil
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pipeline import layout
from pipeline.params import (
    CropsParams,
    DataParams,
    EvaluateParams,
    ModelParams,
    Params,
    PrototypeModelParams,
    SegmentParams,
    SyntheticParams,
    TrainParams,
)
from pipeline.prepare import run_prepare
from pipeline.synthetic import generate_synthetic

if TYPE_CHECKING:
    from model.evaluation import Evaluation

TINY_SYNTHETIC = SyntheticParams(num_classes=3, images_per_class=6, image_size=64)


def tiny_params(**segment: object) -> Params:
    """Default params shrunk to a few tiny images, one worker, small shards, one
    training seed."""
    return replace(
        Params(),
        data=replace(DataParams(), synthetic=TINY_SYNTHETIC),
        segment=replace(SegmentParams(workers=1, shard_size=4), **segment),
        train=replace(TrainParams(), seeds=[0]),
    )


def make_tiny_project(root: Path, params: Params) -> Path:
    """Generate the synthetic set and the images index under ``root``."""
    generate_synthetic(root / layout.SYNTHETIC_ROOT, params.data.synthetic)
    run_prepare(params.data, root)
    return root


# ---------------------------------------------------------------- crops helpers
TINY_CROPS = CropsParams(num_views=6, size=16, workers=1)


def tiny_crops_params(segment: dict | None = None, **crops: object) -> Params:
    """tiny_params with small crops (6 views of 16 x 16) and the given crops keys."""
    return replace(tiny_params(**(segment or {})), crops=replace(TINY_CROPS, **crops))


def make_segmented_project(root: Path, params: Params) -> Path:
    """A tiny project with its images index and mask shards."""
    from pipeline.segment import run_segment

    make_tiny_project(root, params)
    run_segment(params, root)
    return root


def make_cropped_project(root: Path) -> Path:
    """A tiny project segmented and cropped with tiny_crops_params()."""
    from pipeline.crops import run_crops

    params = tiny_crops_params()
    make_segmented_project(root, params)
    run_crops(params, root)
    return root


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a project folder (to change params or artifacts without side effects)."""
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------- trained helpers
TINY_MODEL = ModelParams(backbone="tiny_cnn", weights="none", baseline_image_size=32)
MODEL_KEYS = {f.name for f in fields(PrototypeModelParams)}
TINY_PROTOPOOL = dict(num_prototypes=4, num_slots=2, prototype_dim=8, gumbel_epochs=3)
TINY_PIPNET = dict(pretrain_epochs=1, train_epochs=3, finetune_epochs=1, freeze_epochs=2)


def tiny_train_params(**train: object) -> Params:
    """Tiny crops and tiny networks: ProtoMask and ProtoPNet 1 warm-up, 2 joint, push,
    2 last-layer epochs, two 8-d prototypes per class; ProtoPool the same schedule with a
    pool of 4 prototypes, 2 slots; PIP-Net 1 pretraining and 3 training epochs. Keys of a
    ProtoPNet-style section (epochs, prototypes, loss, optim) apply to ProtoMask's and
    ProtoPNet's sections (the epochs to ProtoPool's too); the others to train."""
    own = {
        "prototypes_per_class": 2,
        "prototype_dim": 8,
        "warmup_epochs": 1,
        "joint_epochs": 2,
        "push_every": 0,
        "last_layer_epochs": 2,
        **{k: v for k, v in train.items() if k in MODEL_KEYS},
    }
    epochs = {k: own[k] for k in ("warmup_epochs", "joint_epochs", "last_layer_epochs")}
    defaults = tiny_params().train  # its one seed
    base = replace(
        defaults,
        batch_size=4,
        loader_workers=0,
        device="cpu",
        model=TINY_MODEL,
        protomask=replace(defaults.protomask, **own),
        protopnet=replace(defaults.protopnet, **own),
        protopool=replace(defaults.protopool, **TINY_PROTOPOOL, **epochs),
        pipnet=replace(defaults.pipnet, **TINY_PIPNET),
    )
    rest = {k: v for k, v in train.items() if k not in MODEL_KEYS}
    return replace(tiny_crops_params(), train=replace(base, **rest))


def tiny_trained_params() -> Params:
    """tiny_crops_params with a 2-step training (1 joint epoch, push) of a tiny_cnn network."""
    return tiny_train_params(warmup_epochs=0, joint_epochs=1, last_layer_epochs=0)


def make_trained_project(cropped: Path, root: Path, params: Params) -> Path:
    """A copy of a cropped project with both models trained with ``params``."""
    from model.training import run_training

    project = copy_project(cropped, root)
    for kind in ("protomask", "protopnet"):
        run_training(params, kind, project)
    return project


# ---------------------------------------------------------------- evaluated helpers
TINY_EVALUATE = EvaluateParams(
    device="cpu", batch_size=4, sanity_images=4, report_prototypes=3, report_images=2
)
EVALUATED_KINDS = ("protomask", "protopnet")


def tiny_evaluated_params(**evaluate: object) -> Params:
    """tiny_trained_params with a small evaluation (4 sanity images, a report of 3
    prototypes and 2 test images) and the given evaluate keys."""
    return replace(tiny_trained_params(), evaluate=replace(TINY_EVALUATE, **evaluate))


class EvaluatedProject(NamedTuple):
    """A project evaluated and compared, and the evaluations (report builders included)."""

    root: Path
    runs: dict[str, Evaluation]


def make_evaluated_project(trained: Path, root: Path, params: Params) -> EvaluatedProject:
    """A copy of a trained project with EVALUATED_KINDS evaluated and compared."""
    from model.comparison import run_compare
    from model.evaluation import run_evaluation

    project = copy_project(trained, root)
    runs = {kind: run_evaluation(params, kind, project) for kind in EVALUATED_KINDS}
    run_compare(params, project, models=EVALUATED_KINDS)
    return EvaluatedProject(project, runs)
