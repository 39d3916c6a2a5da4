"""`dvc repro` from prepare to evaluate on a tiny Stanford Dogs and a tiny Stanford Cars
folder in their distributed layouts (two DVC projects, reproduced side by side): the
classical segmenter, a tiny ProtoMask, one seed. Both datasets have object
boxes and nothing else, so the box metrics are numbers and the part and segmentation
metrics are absent with their reasons."""

from __future__ import annotations

import copy
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model.metric_layout import value_of
from model.metrics.prototypes import NO_PARTS
from model.metrics.saliency import NO_SEGMENTATION
from pipeline import layout
from tests.e2e import TINY, make_project, merged, run
from tests.stanford_fixtures import write_cars_all_in_one, write_dogs

TARGET = "evaluate@protomask-0"
# the shortest valid ProtoMask run: one joint epoch, then the push
QUICK = {
    "data": {"val_fraction": 0.3},
    "train": {
        "protomask": {"warmup_epochs": 0, "joint_epochs": 1, "last_layer_epochs": 0},
    },
    "evaluate": {
        "device": "cpu",
        "batch_size": 4,
        "sanity_images": 1,
        "report_prototypes": 1,
        "report_images": 1,
    },
}
BOX_METRICS = ("object_overlap_box", "background_overlap_box", "iou_box")
PART_METRICS = ("consistency", "stability", "consistency_sbox", "stability_sbox")
SEGMENTATION_METRICS = ("object_overlap", "background_overlap", "iou", "oirr", "ior")
DATASETS = {  # data.source -> (data.root, fixture writer)
    "stanford_dogs": ("data/dogs", write_dogs),
    "stanford_cars": ("data/cars", write_cars_all_in_one),
}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def check_metrics(project: Path, source: str, test_images: int) -> None:
    """The index is the dataset's; the box metrics are numbers, the others absent."""
    index = json.loads((project / layout.PREPARE_METRICS).read_text())
    assert index["test"] == test_images and index["with_parts"] == 0, index
    doc = json.loads((project / layout.evaluate_metrics("protomask", 0)).read_text())
    assert doc["run"]["test_images"] == test_images, source
    for key in BOX_METRICS + ("balanced_accuracy", "vlc", "intra_fd", "inter_fd"):
        value = value_of(doc, key)
        assert isinstance(value, float) and math.isfinite(value), (source, key, value)
    for keys, reason in ((PART_METRICS, NO_PARTS), (SEGMENTATION_METRICS, NO_SEGMENTATION)):
        for key in keys:
            assert value_of(doc, key) == {"absent": reason}, (source, key)
    assert value_of(doc, "mask_consistency") == {"absent": NO_PARTS}, source


def reproduced(root: Path, source: str) -> set[str]:
    """A project on the dataset ``source`` (its fixture in data/), reproduced up to
    evaluate@protomask-0; the stages that ran."""
    folder, write = DATASETS[source]
    params = merged(
        merged(copy.deepcopy(TINY), QUICK), {"data": {"source": source, "root": folder}}
    )
    project = make_project(root, params)
    write(project / folder)
    return stages_run(run(["dvc", "repro", TARGET], project).stdout)


def test_dogs_and_cars_through_dvc_repro(tmp_path: Path) -> None:
    # two projects side by side: each stage is one mostly single-threaded process
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(reproduced, (tmp_path / s for s in DATASETS), DATASETS)
        ran = dict(zip(DATASETS, runs, strict=True))
    for source, test_images in (("stanford_dogs", 2), ("stanford_cars", 4)):
        assert ran[source] == {"prepare", "segment", "crops", "train@protomask-0", TARGET}
        check_metrics(tmp_path / source, source, test_images)
