"""The real `dvc repro prepare` (synthesize + prepare) in a throwaway git repository."""

from __future__ import annotations

import copy
from pathlib import Path

from pipeline import layout
from pipeline.tables import read_table
from tests.e2e import TINY, make_project, run, set_param


def test_repro_runs_once_then_reruns_only_what_a_param_touches(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", copy.deepcopy(TINY))
    first = run(["dvc", "repro", "prepare"], project)
    assert "Running stage 'synthesize'" in first.stdout
    assert "Running stage 'prepare'" in first.stdout
    table, _ = read_table(project / layout.IMAGES_INDEX, "images")
    assert len(table) == 24 and set(table.column("split").to_pylist()) == {"train", "val", "test"}

    again = run(["dvc", "repro", "prepare"], project)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status", "prepare"], project).stdout

    set_param(project, "data.val_fraction", 0.4)
    status = run(["dvc", "status", "prepare"], project).stdout
    assert "prepare:" in status and "synthesize:" not in status
    rerun = run(["dvc", "repro", "prepare"], project)
    assert "Running stage 'prepare'" in rerun.stdout
    assert "Running stage 'synthesize'" not in rerun.stdout

    metrics = run(["dvc", "metrics", "show"], project).stdout
    assert "metrics/prepare.json" in metrics


def test_a_bad_param_stops_the_stage_with_one_line(tmp_path: Path) -> None:
    params = copy.deepcopy(TINY)
    params["data"]["val_fraction"] = 0.7
    project = make_project(tmp_path / "project", params)
    proc = run(["protomask", "prepare"], project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "protomask prepare: params.yaml: data.val_fraction must be in [0, 0.5), got 0.7"
    )
