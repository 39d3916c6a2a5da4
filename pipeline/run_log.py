"""Wall-clock facts of a stage run (seconds, throughput, reused work) kept out of DVC.

DVC-tracked outputs must not change when a stage reruns on the same inputs, so timings
and counts that depend on what was already on disk go to ``logs/<name>.json`` (see
:data:`pipeline.layout.RUN_LOGS`), which is neither a DVC output nor in git.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.atomic import write_json


def write_run_log(project_root: Path, name: str, values: Mapping[str, Any]) -> Path:
    """Write ``values`` to logs/<name>.json under ``project_root``; return the path."""
    path = Path(project_root) / layout.run_log(name)
    write_json(path, dict(values), default=str)
    return path
