"""The DVC cache link type of .dvc/config (``hardlink,copy``: no second copy of every
shard in .dvc/cache) keeps the cache intact when a ``persist: true`` stage reruns.

A tiny DVC project (not the pipeline) with the project's own .dvc/config and one persist
stage that, like segment, crops and train on resume, keeps its output folder: it replaces
one file by write-to-temp-and-rename and appends to another in place (the worst case: an
in-place write into a hard-linked file would reach the cache). DVC unprotects (copies) a
persist output's files before the command runs and removes every other output, so every
cached object still hashes to its name after the rerun.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from configobj import ConfigObj

REPO = Path(__file__).resolve().parent.parent

STAGE = """\
import os, sys
from pathlib import Path
out = Path("out"); out.mkdir(exist_ok=True)
tmp = out / ".state.bin.tmp"
tmp.write_bytes(Path("input.txt").read_bytes() * 1000)
os.replace(tmp, out / "state.bin")  # as pipeline.atomic.atomic_file
with open(out / "log.txt", "a") as log:  # in place, into the file DVC checked out
    log.write(Path("input.txt").read_text())
"""


def cache_objects(project: Path) -> dict[Path, str]:
    """Every file object of the project's cache with the md5 of its bytes."""
    files = (project / ".dvc" / "cache" / "files" / "md5").rglob("*")
    return {
        p: hashlib.md5(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file() and not p.name.endswith(".dir")
    }


def test_persist_rerun_leaves_the_linked_cache_intact(tmp_path: Path) -> None:
    pytest.importorskip("dvc")
    from dvc.repo import Repo

    project = tmp_path / "project"
    project.mkdir()
    Repo.init(project, no_scm=True).close()
    ours = ConfigObj(str(REPO / ".dvc" / "config"))
    assert "hardlink" in ours["cache"]["type"]
    config = ConfigObj(str(project / ".dvc" / "config"))
    config["cache"] = dict(ours["cache"])  # the project's link type, without its git
    config.write()
    (project / "stage.py").write_text(STAGE)
    (project / "input.txt").write_text("one\n")
    (project / "dvc.yaml").write_text(
        "stages:\n"
        "  make:\n"
        f"    cmd: {sys.executable} stage.py\n"
        "    deps: [input.txt, stage.py]\n"
        "    outs:\n"
        "      - out:\n"
        "          persist: true\n"
    )
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with Repo(str(project)) as repo:
            repo.reproduce()
        first = cache_objects(project)
        assert len(first) == 2 and all(p.name == h[2:] for p, h in first.items())
        state = project / "out" / "state.bin"
        cached = next(p for p in first if p.stat().st_size == state.stat().st_size)
        # hard-linked: the output is the cache file itself (read-only), not a copy
        assert state.stat().st_ino == cached.stat().st_ino and state.stat().st_nlink == 2

        (project / "input.txt").write_text("two\n")
        with Repo(str(project)) as repo:
            repo.reproduce()
    finally:
        os.chdir(cwd)
    after = cache_objects(project)
    for path, digest in first.items():  # the first run's objects, byte for byte
        assert after[path] == digest, f"{path} was modified by the rerun"
    assert all(p.name == h[2:] for p, h in after.items())
    assert (project / "out" / "log.txt").read_text() == "one\ntwo\n"
    assert state.read_bytes() == b"two\n" * 1000
    assert len(after) == 4  # the rerun's two new objects beside the first run's


def test_report_files_are_replaced_not_written_into(tmp_path: Path) -> None:
    """A report PNG that is a hard link into the cache is replaced by a new file: the
    cached copy keeps its bytes."""
    import numpy as np

    from model.report import save_png

    cached, out = tmp_path / "cache-file", tmp_path / "report" / "img" / "a.png"
    out.parent.mkdir(parents=True)
    cached.write_bytes(b"cached bytes")
    os.link(cached, out)
    save_png(out, np.zeros((4, 4, 3), np.uint8))
    assert cached.read_bytes() == b"cached bytes"
    assert out.read_bytes().startswith(b"\x89PNG") and not os.path.samefile(cached, out)
