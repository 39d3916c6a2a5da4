"""Run by tests/test_train_ddp.py, alone or under torchrun: predictions and push of a
trained checkpoint over the training split, gathered across ranks, written as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from model import distributed
from model.checkpoint import load_checkpoint, restore
from model.push import push_prototypes
from model.training import build_model, loader, make_dataset, predict
from pipeline import layout
from pipeline.params import load_params


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
    main(Path(sys.argv[1]), Path(sys.argv[2]))
