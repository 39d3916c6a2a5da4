"""Fault injection on the real stage commands: a full disk, a read-only folder, a second
concurrent run, a damaged crop shard met while training. Each ends in one line naming the
file and what to do, never a traceback; nothing finished is lost; a rerun completes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline import layout
from pipeline.params import EvaluateParams, as_dict
from tests.e2e import stage_env
from tests.faults import file_size_limit, flip_in_chunk
from tests.tiny_project import copy_project, tiny_trained_params

OUTPUTS = {
    "synthesize": layout.SYNTHETIC_ROOT,
    "prepare": layout.PREPARE_DIR,
    "segment": layout.SEGMENT_DIR,
    "crops": layout.CROPS_DIR,
    "train": layout.train_dir("protomask", 0),
    "evaluate": layout.evaluate_dir("protomask", 0),
}


def stage(project: Path, *args: str, preexec=None) -> subprocess.CompletedProcess:
    """``protomask <args>`` in ``project`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "stages.cli", *args],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
        preexec_fn=preexec,
    )


def stage_here(project: Path, monkeypatch, *args: str):
    """``protomask <args>`` in ``project``, in this process (a run with no fault injected:
    no interpreter and torch start-up to pay for)."""
    from stages.cli import main

    monkeypatch.chdir(project)
    return CliRunner().invoke(main, list(args))


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def project(trained_project: Path, tmp_path_factory) -> Path:
    root = copy_project(trained_project, tmp_path_factory.mktemp("faults") / "p")
    quick = EvaluateParams(
        device="cpu",
        batch_size=4,
        max_images=4,
        sanity_images=2,
        report_prototypes=2,
        report_images=1,
        # the file-size limit of the full-disk test also caps the loader workers'
        # shared-memory files, a different fault (tests/test_evaluate_parallel.py)
        loader_workers=0,
    )
    params = replace(tiny_trained_params(), evaluate=quick)
    (root / "params.yaml").write_text(yaml.safe_dump(as_dict(params)))
    return root


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_a_full_disk_ends_the_stage_in_one_line_and_a_rerun_completes(
    project: Path, tmp_path: Path, name: str, monkeypatch
) -> None:
    work = copy_project(project, tmp_path / "p")
    import shutil

    if (work / OUTPUTS[name]).exists():
        shutil.rmtree(work / OUTPUTS[name])
    args = [name] + (["--model", "protomask"] if name in ("train", "evaluate") else [])
    full = stage(work, *args, preexec=file_size_limit(4096))
    assert full.returncode == 1, full.stderr
    line = last_line(full)
    assert line.startswith(f"protomask {name}: cannot write") and "File too large" in line, (
        full.stderr
    )
    assert "then rerun" in line and "Traceback" not in full.stderr
    assert leftovers(work) == []
    rerun = stage_here(work, monkeypatch, *args)
    assert rerun.exit_code == 0, rerun.output


def test_a_read_only_folder_ends_the_stage_in_one_line_and_keeps_the_old_output(
    project: Path, tmp_path: Path, monkeypatch
) -> None:
    from stages.cli import main

    work = copy_project(project, tmp_path / "p")
    index = work / layout.IMAGES_INDEX
    before = index.read_bytes()
    real_replace = os.replace

    def read_only(src, dst, *a, **k):
        if "artifacts" in Path(dst).parts:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.chdir(work)
    monkeypatch.setattr(os, "replace", read_only)
    result = CliRunner().invoke(main, ["prepare"])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("protomask prepare: cannot write ") and line.endswith(
        ".parquet: Read-only file system; make the folder writable, then "
        "rerun (finished work is kept, nothing half-written is left behind)"
    ), line
    assert index.read_bytes() == before and leftovers(work / layout.PREPARE_DIR) == []


def test_a_second_concurrent_run_stops_in_one_line(
    project: Path, tmp_path: Path, monkeypatch
) -> None:
    from stages.common import output_lock

    work = copy_project(project, tmp_path / "p")
    logs = work / layout.train_dir("protomask", 0) / "dvclive"
    before = {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()}
    monkeypatch.chdir(work)
    with output_lock("train-protomask", "protomask train --model protomask"):
        second = stage(work, "train", "--model", "protomask")
        # another output, another lock (taken in this process, as a second process would)
        other_model = stage_here(work, monkeypatch, "train", "--model", "protopnet")
    assert second.returncode == 1
    assert last_line(second).startswith(
        f"protomask train: another 'protomask train --model protomask' is running in this "
        f"project (pid {os.getpid()}, lock {layout.LOCKS}/train-protomask.lock)"
    )
    assert other_model.exit_code == 0, other_model.output
    assert {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()} == before
    released = stage_here(work, monkeypatch, "train", "--model", "protomask")
    assert released.exit_code == 0, released.output  # lock released


def test_a_damaged_crop_shard_met_while_training_is_one_line(project: Path, tmp_path: Path) -> None:
    import shutil

    work = copy_project(project, tmp_path / "p")
    shutil.rmtree(work / layout.train_dir("protomask", 0))
    shard = sorted((work / layout.CROPS_DIR).glob("crops-*.h5"))[0]
    flip_in_chunk(shard, "crops", 0)
    proc = stage(work, "train", "--model", "protomask")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = last_line(proc)
    assert line.startswith("protomask train: ") and shard.name in line and "crops" in line
