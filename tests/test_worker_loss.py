"""A local dask worker killed mid-task (as the kernel's out-of-memory killer does) is
reported in one line; this module imports little, so the worker that unpickles its task
function starts fast."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from pipeline.execution import dask_client


def die_once(marker: str) -> int:
    """Kill this dask worker process the first time (SIGKILL, as the kernel's OOM killer
    does); return 1 when run again on the restarted worker."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return 1


def profiling(dask_worker) -> bool:
    """Whether a dask worker runs its statistical profiler (sampled every 10 ms)."""
    return "profile" in dask_worker.periodic_callbacks


def test_a_killed_local_worker_is_logged_in_one_line(tmp_path: Path):
    """The nanny's note that a worker died (silenced with dask's other logs) reaches the
    stage's logger as one warning line; the task still completes on the restarted worker."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("protomask.segment")
    handler, old_level = Collect(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        with dask_client(1, stage="segment") as client:
            assert client.submit(die_once, str(tmp_path / "killed"), pure=False).result() == 1
            # the restarted worker too runs without dask's profiler (memory grew with time)
            assert list(client.run(profiling).values()) == [False]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lost = [line for line in lines if "lost a dask worker" in line]
    assert len(lost) == 1, lines
    assert "killed by signal 9" in lost[0] and "out-of-memory" in lost[0]
