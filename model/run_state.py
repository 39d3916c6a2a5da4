"""Where a training run stands on disk: its checkpoints, what a rerun may reuse, its logs.

A run's folder holds ``latest/`` (after every step), ``best/`` (the best pushed state on
the validation split) and ``final/`` (the last step), each one ``checkpoint.pt`` and the
``push.json`` of its last push (a run may push several times), plus the dvclive logs.
:func:`finished_summary` says when a rerun has nothing to do,
:func:`resume_point` where an interrupted run continues; both verify every checkpoint
(CRC) and never hand out a damaged or un-pushed one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from model import distributed as dist_utils
from model.checkpoint import Checkpoint, load_checkpoint
from pipeline.atomic import atomic_file
from pipeline.errors import ArtifactError

log = logging.getLogger(__name__)


def checkpoint_path(out_dir: Path, which: str) -> Path:
    """<out_dir>/<which>/checkpoint.pt (which: latest | best | final)."""
    return out_dir / which / "checkpoint.pt"


PUSH_RECORDS = "push.json"  # beside a checkpoint: where its prototypes were pushed from


def copy_checkpoint(out_dir: Path, source: str, target: str) -> None:
    """Copy ``source``'s checkpoint (and the records of its last push) over ``target``'s,
    atomically each."""
    records = out_dir / source / PUSH_RECORDS
    if records.is_file():
        with atomic_file(out_dir / target / PUSH_RECORDS) as tmp:
            shutil.copyfile(records, tmp)
    with atomic_file(checkpoint_path(out_dir, target)) as tmp:
        shutil.copyfile(checkpoint_path(out_dir, source), tmp)


def _holds_step(path: Path, fp: str, step: int) -> bool:
    """Whether ``path`` is an intact checkpoint of this run saved after ``step``."""
    try:
        ckpt = load_checkpoint(path)
    except ArtifactError:
        return False
    return ckpt.fingerprint == fp and int(ckpt.extra.get("next_step", -1)) - 1 == step


def finished_summary(out_dir: Path, fp: str, num_steps: int) -> Optional[dict]:
    """The summary of a finished run with this fingerprint whose ``best/`` and ``final/``
    are intact (CRC-checked) and pushed; None when the run must continue or be rebuilt."""
    summary = out_dir / "summary.json"
    if not summary.is_file():
        return None
    for which in ("final", "best"):
        path = checkpoint_path(out_dir, which)
        try:
            ckpt = load_checkpoint(path)
        except ArtifactError as exc:
            log.warning("train: %s; rebuilding it", exc)
            return None
        if ckpt.fingerprint != fp:
            return None
        if not ckpt.pushed:
            log.warning("train: %s holds prototypes that were never pushed; rebuilding it", path)
            return None
        if which == "final" and int(ckpt.extra.get("next_step", -1)) != num_steps:
            return None  # final/ is not the last step (read once, not again)
    return json.loads(summary.read_text())


def resume_point(out_dir: Path, fp: str) -> Optional[Checkpoint]:
    """``latest/`` when it is intact, of this run, and ``best/`` is intact or rebuildable
    from it; None (train from the start) otherwise, saying why when something is damaged."""
    latest = checkpoint_path(out_dir, "latest")
    if not latest.exists():
        return None
    try:
        ckpt = load_checkpoint(latest)
    except ArtifactError as exc:
        log.warning("train: %s; training from the start", exc)
        return None
    if ckpt.fingerprint != fp:
        return None
    best_step, last = int(ckpt.extra["best_step"]), int(ckpt.extra["next_step"]) - 1
    if (
        best_step >= 0
        and best_step != last
        and not _holds_step(checkpoint_path(out_dir, "best"), fp, best_step)
    ):
        log.warning(
            "train: %s is damaged or missing and latest/ is a later step (%d, best "
            "was %d): training from the start to rebuild it",
            checkpoint_path(out_dir, "best"),
            last,
            best_step,
        )
        return None
    return ckpt


class Logger:
    """dvclive metrics and plots under the model's output folder (rank 0 only).

    The folder is always written afresh: a resumed run first replays the history stored in
    ``latest/``, so its logs equal an uninterrupted run's even when a kill fell between
    saving a step and logging it. No wall-clock values (dvclive's timestamps are off).
    """

    def __init__(self, directory: Path, history: list[dict]) -> None:
        self.live = None
        if dist_utils.is_main():
            from dvclive import Live

            shutil.rmtree(directory, ignore_errors=True)
            self.live = Live(
                str(directory), resume=False, save_dvc_exp=False, dvcyaml=None, report=None
            )
            for record in history:
                self.log(record)

    def log(self, record: dict) -> None:
        if self.live is None:
            return
        self.live.step = int(record["step"])
        for key, value in record.items():
            if isinstance(value, float):
                self.live.log_metric(key, value, timestamp=False)
        self.live.next_step()

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


@dataclass
class RunState:
    """Where a run stands: the next step, the best post-push state so far, the records."""

    next_step: int = 0
    best_val: float = -1.0
    best_step: int = -1
    history: list = field(default_factory=list)

    def extra(self) -> dict:
        return {
            "next_step": self.next_step,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "history": json.dumps(self.history),
        }

    @classmethod
    def of(cls, ckpt: Checkpoint) -> RunState:
        e = ckpt.extra
        return cls(
            int(e["next_step"]), float(e["best_val"]), int(e["best_step"]), json.loads(e["history"])
        )
