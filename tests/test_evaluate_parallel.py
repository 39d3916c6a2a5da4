"""Evaluate on several processes: DataLoader workers preparing the inputs, and two torchrun
CPU ranks sharing the test batches, write the same bytes as one process alone."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from model.evaluation import run_evaluation
from pipeline import layout
from pipeline.errors import ProtomaskError
from pipeline.evaluation_loader import prepared_batches
from pipeline.params import EvaluateParams, Params, as_dict
from tests.launch import torchrun
from tests.tiny_project import copy_project, tiny_trained_params

# 6 test images in 3 batches of 2: rank 0 takes batches 0 and 2, rank 1 batch 1; the
# sanity pairs (rows 0-2) and the report's samples (rows 0, 2, 5) come from both ranks
SPLIT = EvaluateParams(
    device="cpu",
    batch_size=2,
    sanity_images=3,
    report_prototypes=2,
    report_images=3,
    loader_workers=0,
)


def params_with(**evaluate: object) -> Params:
    return replace(tiny_trained_params(), evaluate=replace(SPLIT, **evaluate))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """One evaluate process computes as a torchrun rank does (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def outputs(project: Path, kind: str) -> dict[str, bytes]:
    """The metrics file and every file of the report folder, by path."""
    report = project / layout.evaluate_dir(kind, 0)
    files = {str(p.relative_to(project)): p.read_bytes() for p in report.rglob("*") if p.is_file()}
    metrics = project / layout.evaluate_metrics(kind, 0)
    return {**files, str(layout.evaluate_metrics(kind, 0)): metrics.read_bytes()}


def without_outputs(source: Path, target: Path) -> Path:
    """A copy of an evaluated project without its evaluate outputs."""
    project = copy_project(source, target)
    shutil.rmtree(project / layout.EVALUATE_DIR)
    shutil.rmtree(project / layout.EVALUATE_METRICS)
    return project


@pytest.fixture(scope="module")
def single(trained_project: Path, tmp_path_factory) -> Path:
    """ProtoMask evaluated by one process, inputs prepared in it, on one torch thread."""
    project = copy_project(trained_project, tmp_path_factory.mktemp("single") / "p")
    with torch_threads(1):
        run_evaluation(params_with(), "protomask", project)
    return project


def test_loader_workers_give_the_bytes_of_the_main_process(single: Path, tmp_path: Path) -> None:
    project = without_outputs(single, tmp_path / "p")
    with torch_threads(1):
        run_evaluation(params_with(loader_workers=2), "protomask", project)
    assert outputs(project, "protomask") == outputs(single, "protomask")


def test_two_torchrun_ranks_write_the_bytes_of_one_process(single: Path, tmp_path: Path) -> None:
    project = without_outputs(single, tmp_path / "p")
    reference = outputs(single, "protomask")
    params = params_with(loader_workers=1)  # each rank with a worker too
    (project / "params.yaml").write_text(yaml.safe_dump(as_dict(params)))
    run = torchrun(["-m", "stages.cli", "evaluate", "--model", "protomask", "--seed", "0"], project)
    assert run.stdout.count("evaluate protomask seed 0: 6 test images") == 1  # rank 0 only
    assert re.search(r"balanced accuracy [\d.]+% \(chance \d+\.\d%\)", run.stdout)
    assert outputs(project, "protomask") == reference


class SlowRows(torch.utils.data.Dataset):
    """Rows that take longer to prepare than the loader may wait (a stuck worker)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        time.sleep(3)
        return i


def test_loader_workers_that_deliver_nothing_stop_evaluate_with_the_cause() -> None:
    """A worker that cannot hand its batch over (full /dev/shm) must not hang evaluate."""
    batches = prepared_batches(SlowRows(), [[0], [1]], workers=1, timeout_s=1)
    with pytest.raises(ProtomaskError, match=r"delivered no batch for 1 s.*loader_workers: 0"):
        next(iter(batches))
