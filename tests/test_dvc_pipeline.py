"""The real `dvc repro` of the whole pipeline on tiny params, in a throwaway git repository."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline import layout
from pipeline.tables import read_table
from tests.e2e import TINY, make_project, merged, run, set_param

MODELS = layout.MODELS
TRAIN = {f"train@{m}-0" for m in MODELS}
EVALUATE = {f"evaluate@{m}-0" for m in MODELS}
# evaluate on the tiny test split with a small report and sanity check: every run of the
# evaluate stages below (the first repro, the experiment) spends its time on DVC, not on
# report images nothing here looks at
QUICK_EVALUATE = {
    "evaluate": {
        "device": "cpu",
        "batch_size": 4,
        "sanity_images": 2,
        "report_prototypes": 2,
        "report_images": 1,
    }
}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def changed_stages(project: Path) -> set[str]:
    """Stages `dvc status` reports as changed."""
    out = run(["dvc", "status"], project).stdout
    return {
        line.rstrip(":").strip()
        for line in out.splitlines()
        if line and not line.startswith(("\t", " ")) and line.rstrip().endswith(":")
    }


def snapshot(project: Path, target: Path) -> Path:
    """A copy of the shared project (workspace, git history, DVC cache) with its current,
    reproduced state committed: experiments need a baseline commit, and whatever a test does
    to the copy leaves the shared project and the other tests' order alone."""
    shutil.copytree(project, target, symlinks=True)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "baseline", "--allow-empty"], target)
    return target


def digests(root: Path, paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path relative to root."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in files
        if f.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = merged(copy.deepcopy(TINY), QUICK_EVALUATE)
    root = make_project(tmp_path_factory.mktemp("pipeline") / "project", params)
    first = run(["dvc", "repro"], root)
    assert {"synthesize", "prepare", "segment", "crops", "compare"} | TRAIN | EVALUATE == (
        stages_run(first.stdout)
    )
    return root


def test_second_repro_runs_nothing(project: Path) -> None:
    assert stages_run(run(["dvc", "repro"], project).stdout) == set()
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout


def test_dvc_metrics_show_is_the_short_headline_view(project: Path) -> None:
    """`dvc metrics show`: each model's headline and training summary and the verdict, a
    table of a few columns; every metric stays in metrics/evaluate/ and shows on request."""
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    files = next(iter(json.loads(shown).values()))["data"]
    listed = {str(layout.COMPARE_METRICS)} | {
        str(path(model, 0))
        for model in MODELS
        for path in (layout.headline_metrics, layout.train_metrics)
    }
    assert set(files) == listed
    columns = {key for value in files.values() for key in flat_keys(value["data"])}
    assert len(columns) <= 20, sorted(columns)
    assert set(files[str(layout.COMPARE_METRICS)]["data"]) == {"verdict", "seeds", "claims"}
    full = json.loads((project / layout.evaluate_metrics("protomask", 0)).read_text())
    headline = files[str(layout.headline_metrics("protomask", 0))]["data"]
    assert headline["balanced_accuracy"] == full["balanced_accuracy"]
    table = run(["dvc", "metrics", "show", str(layout.SEGMENT_METRICS)], project).stdout
    assert "masks_per_image" in table


def flat_keys(doc: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a nested document, as `dvc metrics show` makes its columns."""
    out = []
    for key, value in doc.items():
        if isinstance(value, dict):
            out += flat_keys(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


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
    assert (clone / layout.train_dir("protomask", 0) / "final" / "checkpoint.pt").exists()


def test_a_data_param_reruns_prepare_not_synthesize(project: Path, tmp_path: Path) -> None:
    """The index the first repro wrote holds every image in three splits; `dvc repro
    prepare` runs nothing more, nor does a speed-only key (data.decode_workers: no DVC
    param, tests/test_params_dvc.py); a new data.val_fraction reruns prepare, not
    synthesize (the prepare end of the pipeline: was tests/test_dvc_prepare.py's own
    project, and the speed-only check tests/test_params_dvc.py's)."""
    repo = snapshot(project, tmp_path / "repo")
    table, _ = read_table(repo / layout.IMAGES_INDEX, "images")
    assert len(table) == 24 and set(table.column("split").to_pylist()) == {"train", "val", "test"}
    assert stages_run(run(["dvc", "repro", "prepare"], repo).stdout) == set()
    set_param(repo, "data.decode_workers", 1)  # the default is 2
    assert "Data and pipelines are up to date" in run(["dvc", "status", "prepare"], repo).stdout
    set_param(repo, "data.val_fraction", 0.4)
    status = run(["dvc", "status", "prepare"], repo).stdout
    assert "prepare:" in status and "synthesize:" not in status
    assert "modified:" in status and "data.val_fraction" in status
    rerun = stages_run(run(["dvc", "repro", "prepare"], repo).stdout)
    assert "prepare" in rerun and "synthesize" not in rerun
    shown = run(["dvc", "metrics", "show", str(layout.PREPARE_METRICS)], repo).stdout
    assert "val" in shown and "train" in shown  # a plain output, shown when named


def test_a_crops_param_reruns_crops_and_what_follows_only(project: Path, tmp_path: Path) -> None:
    """A new crops param makes crops stale and nothing upstream; `dvc repro crops` reruns
    crops alone, after which what follows is stale (what a full repro reruns: the first
    repro already ran every stage for real, the train stages need not run again here)."""
    repo = snapshot(project, tmp_path / "repo")
    set_param(repo, "crops.size", 24)
    changed = changed_stages(repo)
    assert "crops" in changed
    assert not {"synthesize", "prepare", "segment"} & changed
    assert stages_run(run(["dvc", "repro", "crops"], repo).stdout) == {"crops"}
    stale = changed_stages(repo)
    assert TRAIN <= stale
    assert not {"synthesize", "prepare", "segment", "crops"} & stale


def test_an_experiment_runs_what_its_param_changes_and_is_listed(
    project: Path, tmp_path: Path
) -> None:
    """`dvc exp run -S evaluate.verdict_min_seeds=1` reruns compare only (its own params)
    and `dvc exp show` lists the experiment with its param and metrics beside the
    baseline."""
    repo = snapshot(project, tmp_path / "repo")
    command = ["dvc", "exp", "run", "-n", "one-seed", "-S", "evaluate.verdict_min_seeds=1"]
    assert stages_run(run(command, repo).stdout) == {"compare"}
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    baseline = next(row for row in rows if row["rev"] != "workspace")
    experiments = {e["name"]: e["revs"][0]["data"] for e in baseline["experiments"] or []}
    assert set(experiments) == {"one-seed"}
    base, exp = baseline["data"], experiments["one-seed"]
    assert base["params"]["params.yaml"]["data"]["evaluate"]["verdict_min_seeds"] == 3
    assert exp["params"]["params.yaml"]["data"]["evaluate"]["verdict_min_seeds"] == 1
    compared = exp["metrics"][str(layout.COMPARE_METRICS)]["data"]
    assert sum(compared["claims"].values()) == 4 * (len(MODELS) - 1)
    assert compared["seeds"] == 1
    for model in MODELS:
        trained = str(layout.train_dir(model, 0))
        assert exp["outs"][trained]["hash"] == base["outs"][trained]["hash"]


def test_one_models_param_makes_only_that_models_stages_stale(
    project: Path, tmp_path: Path
) -> None:
    """Each model's section is its own DVC param: a new train.protopnet.prototype_dim makes
    train@protopnet-0 stale and no other model's stage."""
    repo = snapshot(project, tmp_path / "repo")
    set_param(repo, "train.protopnet.prototype_dim", 4)
    assert changed_stages(repo) == {"train@protopnet-0"}


def test_a_new_seed_adds_its_own_stages_and_reruns_no_finished_one(
    project: Path, tmp_path: Path
) -> None:
    """train.seeds [0] -> [0, 1]: the stages of seed 1 are new and compare reads the list;
    no stage of seed 0 is stale (its command names its seed, not the list)."""
    repo = snapshot(project, tmp_path / "repo")
    set_param(repo, "train.seeds", [0, 1])
    changed = changed_stages(repo)
    new = {f"{stage}@{m}-1" for stage in ("train", "evaluate") for m in MODELS}
    assert changed == new | {"compare"}


def test_an_evaluate_param_changes_only_the_evaluate_stages(project: Path, tmp_path: Path) -> None:
    """Each stage depends on its own params section only: a new `evaluate.top_k` leaves
    synthesize to train up to date (`dvc status`, `dvc repro --dry`)."""
    repo = snapshot(project, tmp_path / "repo")
    set_param(repo, "evaluate.top_k", 3)
    assert changed_stages(repo) == EVALUATE
    dry = stages_run(run(["dvc", "repro", "--dry"], repo).stdout)
    assert EVALUATE <= dry <= EVALUATE | {"compare"}


def test_a_stage_run_by_hand_writes_what_dvc_repro_wrote(project: Path, tmp_path: Path) -> None:
    """`protomask crops` run by hand from scratch writes the bytes `dvc repro` wrote, so
    `dvc status` finds the stage up to date afterwards."""
    repo = snapshot(project, tmp_path / "repo")
    outputs = [repo / layout.CROPS_DIR, repo / layout.CROPS_METRICS]
    by_dvc = digests(repo, outputs)
    assert any(name.endswith(".h5") for name in by_dvc)
    shutil.rmtree(outputs[0])
    outputs[1].unlink()
    run(["protomask", "crops"], repo)
    assert digests(repo, outputs) == by_dvc
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
