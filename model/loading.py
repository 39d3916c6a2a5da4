"""The trained network the evaluate stage explains, as the train stage left it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from model.checkpoint import load_checkpoint, restore
from model.training import build_model
from pipeline import layout
from pipeline.errors import ArtifactError, ParamsError
from pipeline.model_inputs import model_kind
from pipeline.params import TrainParams, build_section


def load_model(
    project_root: Path,
    kind: str,
    which: str,
    num_classes: int,
    device: torch.device,
    seed: int = 0,
) -> tuple[nn.Module, TrainParams]:
    """The trained network of artifacts/train/<kind>/seed-<seed>/<which>/checkpoint.pt.

    Args:
        project_root: the project folder.
        kind: the model (protomask, protopnet, protopool, pipnet).
        which: the checkpoint (params evaluate.checkpoint, e.g. ``best``).
        num_classes: classes of the dataset.
        device: where the network runs (channels-last, eval mode).
        seed: the training seed of the run.

    Returns:
        The network, built with the train params stored in the checkpoint (its trunk
        weights come from the checkpoint too), and those train params.
    """
    path = project_root / layout.train_dir(kind, seed) / which / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    if not ckpt.pushed:  # the checkpoint's flag: a valid model (see Recipe.valid_after)
        why = (
            f"its prototypes were never pushed onto training "
            f"{'patches' if model_kind(kind).full_image else 'views'}, so its explanations "
            f"would not show real regions"
            if model_kind(kind).pushed
            else "it holds a pretraining state (its classifier was never trained)"
        )
        raise ArtifactError(f"{path}: {why}; rerun train")
    try:
        train = build_section(TrainParams, ckpt.params.get("train", {}), "train.")
    except ParamsError as exc:
        raise ArtifactError(f"{path}: its train params are not readable ({exc})") from None
    train = replace(train, model=replace(train.model, weights="none"))
    model = build_model(kind, train, num_classes)
    restore(ckpt, model=model, rng=False)
    model = model.to(device, memory_format=torch.channels_last).eval()
    model.channels_last = True
    return model, train
