"""Training under torchrun: 2 CPU processes (gloo) train, and gather predictions and push
exactly as one process does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from model.checkpoint import load_checkpoint
from pipeline import layout
from pipeline.params import as_dict
from tests import ddp_check
from tests.launch import torchrun
from tests.tiny_project import copy_project, tiny_train_params

REPO = Path(__file__).resolve().parents[1]


def test_two_ranks_train_and_gather_like_one_process(
    schedule_project: Path, tmp_path: Path
) -> None:
    project = copy_project(schedule_project, tmp_path / "p")
    shutil.rmtree(project / layout.train_dir("protomask", 0))
    (project / "params.yaml").write_text(yaml.safe_dump(as_dict(tiny_train_params())))
    # one launch: the train stage, then predictions and push of its checkpoint, gathered
    double = tmp_path / "double.json"
    run = torchrun(
        [str(REPO / "tests" / "ddp_check.py"), str(project), str(double), "--train"], project
    )
    assert run.stdout.count("train protomask seed 0: best validation accuracy") == 1  # rank 0 only
    final = load_checkpoint(project / layout.train_dir("protomask", 0) / "final" / "checkpoint.pt")
    assert final.period == "last_layer"

    single = tmp_path / "single.json"
    ddp_check.main(project, single)  # one process, no group: the reference
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert one["ids"] == two["ids"] and len(one["ids"]) == len(set(one["ids"]))
    assert one["argmax"] == two["argmax"]
    assert [(r["image_id"], r["view"]) for r in one["push"]] == [
        (r["image_id"], r["view"]) for r in two["push"]
    ]
