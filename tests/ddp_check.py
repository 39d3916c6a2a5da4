"""Run by tests/test_train_ddp.py, alone, in-process or under torchrun: predictions and push
of a trained checkpoint over the training split, gathered across ranks, written as JSON.

``ddp_check.py PROJECT OUT --train`` first runs ``protomask train --model protomask`` in
the same processes (the stage as the CLI runs it, its summary line on stdout), so one
torchrun launch both trains and checks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from model import distributed
from model.checkpoint import load_checkpoint, restore
from model.push import push_prototypes
from model.training import build_model, loader, make_dataset, predict
from pipeline import layout
from pipeline.params import load_params


def train(project: Path) -> None:
    """The train stage through its CLI, in ``project``. It joins the group; the group is
    kept for the check (a second init after destroy_process_group can read the first
    group's stale gloo addresses from the store: connection refused)."""
    from stages.cli import main as cli

    os.chdir(project)
    leave = distributed.shutdown
    distributed.shutdown = lambda: None
    try:
        cli(["train", "--model", "protomask"], standalone_mode=False)
    finally:
        distributed.shutdown = leave
    sys.stdout.flush()


def main(project: Path, out: Path) -> None:
    distributed.init_from_env()
    params = load_params(project / "params.yaml")
    dataset = make_dataset("protomask", params, "train", project, augment=False)
    model = build_model("protomask", params.train, int(dataset.labels.max()) + 1)
    restore(
        load_checkpoint(project / layout.train_dir("protomask", 0) / "final" / "checkpoint.pt"),
        model=model,
        rng=False,
    )
    ids, labels, logits = predict(
        model, loader(dataset, params.train, shuffle_seed=None), torch.device("cpu"), params.train
    )
    pushed = push_prototypes(model, loader(dataset, params.train, shuffle_seed=None), update=False)
    if distributed.is_main():
        out.write_text(
            json.dumps(
                {
                    "ids": ids.tolist(),
                    "labels": labels.tolist(),
                    "argmax": logits.argmax(1).tolist(),
                    "push": pushed.records(),
                }
            )
        )
    distributed.shutdown()


if __name__ == "__main__":
    if "--train" in sys.argv[3:]:
        train(Path(sys.argv[1]))
    main(Path(sys.argv[1]), Path(sys.argv[2]))
