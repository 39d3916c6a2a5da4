"""The committed dvc.lock is current: made by the committed code and params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model", "stages")


def test_committed_dvc_lock_matches_the_code_and_params() -> None:
    """``dvc status`` may report missing data and outputs (a fresh clone has none), never a
    changed code dependency, changed params or a changed command."""
    env = dict(
        os.environ,
        DVC_NO_ANALYTICS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    proc = subprocess.run(
        ["dvc", "status", "--json"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    stale = []
    for stage, changes in json.loads(proc.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):
                stale.append((stage, change))  # e.g. "changed command"
                continue
            for kind, entries in change.items():
                if kind != "changed deps":
                    if kind != "changed outs":
                        stale.append((stage, kind, entries))
                    continue
                for path, status in entries.items():
                    if path.split("/")[0] in PACKAGES or path.endswith(".yaml"):
                        stale.append((stage, path, status))
    assert not stale, (
        f"dvc.lock is stale against the code: run `make repro` and commit dvc.lock: {stale}"
    )
