"""The real `dvc repro` of the whole pipeline on tiny params, in a throwaway git repository."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from tests.e2e import TINY, make_project, run, set_param


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def changed_stages(project: Path) -> set[str]:
    """Stages `dvc status` reports as changed."""
    out = run(["dvc", "status"], project).stdout
    return {line.rstrip(":").strip() for line in out.splitlines()
            if line and not line.startswith(("\t", " ")) and line.rstrip().endswith(":")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("pipeline") / "project", copy.deepcopy(TINY))
    first = run(["dvc", "repro"], root)
    assert {"synthesize", "prepare", "segment", "crops", "train@protomask",
            "train@protopnet"} <= stages_run(first.stdout)
    return root


def test_second_repro_runs_nothing(project: Path) -> None:
    assert stages_run(run(["dvc", "repro"], project).stdout) == set()
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout


def test_metrics_of_every_stage_are_listed(project: Path) -> None:
    shown = run(["dvc", "metrics", "show"], project).stdout
    for name in ("prepare.json", "segment.json", "crops.json", "protomask.json",
                 "protopnet.json"):
        assert name in shown


def test_a_dvc_remote_round_trip_needs_no_rerun(project: Path, tmp_path: Path) -> None:
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "pipeline results"], project)
    run(["dvc", "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    assert stages_run(run(["dvc", "repro"], clone).stdout) == set()
    assert (clone / "artifacts" / "train" / "protomask" / "final" / "checkpoint.pt").exists()


def test_a_crops_param_reruns_crops_and_what_follows_only(project: Path) -> None:
    set_param(project, "crops.size", 24)
    changed = changed_stages(project)
    assert "crops" in changed
    assert not {"synthesize", "prepare", "segment"} & changed
    rerun = stages_run(run(["dvc", "repro"], project).stdout)
    assert {"crops", "train@protomask", "train@protopnet"} <= rerun
    assert not {"synthesize", "prepare", "segment"} & rerun
