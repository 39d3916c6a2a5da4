"""The prepare stage as DVC runs it: a bad param ends it in one line. (`dvc repro prepare`
running once, then only what a data param touches: tests/test_dvc_pipeline.py, on the
project its whole-pipeline repro built.)"""

from __future__ import annotations

import copy
from pathlib import Path

from tests.e2e import TINY, make_project, run


def test_a_bad_param_stops_the_stage_with_one_line(tmp_path: Path) -> None:
    params = copy.deepcopy(TINY)
    params["data"]["val_fraction"] = 0.7
    project = make_project(tmp_path / "project", params)
    proc = run(["protomask", "prepare"], project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "protomask prepare: params.yaml: data.val_fraction must be in [0, 0.5), got 0.7"
    )
