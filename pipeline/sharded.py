"""The runner of a sharded stage (segment, crops): one task per output shard.

:func:`run_shards` removes what the current plan does not name, keeps every finished
shard whose fingerprint matches and that reads back intact (a damaged one is named on
stderr and rebuilt), maps the rest over dask with a progress bar that advances per image
(the tasks report their running counts, :mod:`pipeline.progress`), and times it all.
What a stage makes of the results (its metrics, index, summary line) stays in the
stage's module; :meth:`ShardRun.write_log` writes the run's wall-clock facts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pipeline.execution import dask_client, map_tasks, remove_stale, shards_to_build
from pipeline.hdf5_files import ShardCheck
from pipeline.progress import Progress, ShardTracker, get_logger
from pipeline.run_log import write_run_log


class ShardTask(Protocol):
    """A task that writes one shard: where, the fingerprint it stamps, its images."""

    out_path: str
    fingerprint: str

    @property
    def num_images(self) -> int: ...


class ShardResult(Protocol):
    """What a task returns: at least how many images its shard holds."""

    images: int


T = TypeVar("T", bound=ShardTask)
R = TypeVar("R", bound=ShardResult)


@dataclass(frozen=True)
class ShardedStage(Generic[T, R]):
    """How a stage's shards are checked, built and shown.

    Args:
        name: the stage (progress bar, stderr lines, run log name).
        prefix: every shard's (and temporary leftover's) name starts so.
        check: whether an existing shard can be reused for a fingerprint (full read).
        build: writes one task's shard (runs on a dask worker).
        keep: other file names of the output folder that ``prefix`` matches but the
            plan still wants (e.g. the crops index).
        counts: a finished task's counts (``images`` and what ``postfix`` reads); its
            task reports the same counts while it runs (:class:`ShardReporter`).
        postfix: the progress bar's postfix (running means) from the counts summed over
            the finished and running tasks.
    """

    name: str
    prefix: str
    check: Callable[[str, str], ShardCheck]
    build: Callable[[T], R]
    keep: frozenset[str] = frozenset()
    counts: Callable[[R], dict[str, int]] = lambda result: {"images": result.images}
    postfix: Callable[[dict[str, int]], dict[str, Any]] = lambda counts: {}


@dataclass
class ShardRun(Generic[T, R]):
    """What :func:`run_shards` did: the tasks it built, their results, the timings."""

    tasks: Sequence[T]
    built: list[T]
    damaged: list[str]
    results: list[R] = field(default_factory=list)
    seconds: float = 0.0
    verify_seconds: float = 0.0

    @property
    def rebuilt(self) -> set[str]:
        """Output paths of the shards this run wrote."""
        return {t.out_path for t in self.built}

    def facts(self) -> dict[str, Any]:
        """The run's wall-clock facts (kept out of DVC): shards reused, damaged shards
        rebuilt, seconds, verification seconds, images per second of the built shards."""
        images = sum(t.num_images for t in self.built)
        return {
            "shards_reused": len(self.tasks) - len(self.built),
            "shards_damaged": self.damaged,
            "seconds": self.seconds,
            "verify_seconds": self.verify_seconds,
            "images_per_second": (
                images / self.seconds if self.built and self.seconds > 0 else None
            ),
        }

    def write_log(self, project_root: Path, stage: str) -> dict[str, Any]:
        """Write :meth:`facts` to logs/<stage>.json; return them."""
        facts = self.facts()
        write_run_log(project_root, stage, facts)
        return facts


def run_shards(
    stage: ShardedStage[T, R],
    tasks: Sequence[T],
    out_dir: Path,
    project_root: Path,
    *,
    workers: int,
    scheduler: str | None,
) -> ShardRun[T, R]:
    """Bring every shard of ``tasks`` up to date in ``out_dir``.

    Args:
        stage: how the shards are checked, built and shown.
        tasks: the plan, one task per shard.
        out_dir: the output folder; files with the stage's prefix that the plan does
            not name are removed first.
        project_root: shown paths are relative to it.
        workers: local dask worker processes (when no scheduler is given).
        scheduler: address of an existing dask scheduler, or None.

    Returns:
        The tasks built, their results (in completion order) and the timings.
    """
    wanted = {os.path.basename(t.out_path) for t in tasks}  # no Path per task: O(T), fast
    remove_stale(out_dir, stage.prefix, wanted | stage.keep)
    started = time.perf_counter()
    todo, damaged = shards_to_build(stage.name, tasks, stage.check, project_root)
    run: ShardRun[T, R] = ShardRun(tasks, todo, damaged)
    run.verify_seconds = time.perf_counter() - started
    if todo:
        with dask_client(workers, scheduler, stage=stage.name) as client:
            _collect(run, client, stage)
    run.seconds = time.perf_counter() - started
    return run


def _collect(run: ShardRun[T, R], client: Any, stage: ShardedStage[T, R]) -> None:
    """Map the tasks to build over ``client`` and gather their results into ``run``,
    while a progress bar counts the images done (running tasks included)."""
    total = sum(t.num_images for t in run.built)
    with Progress(stage.name, total, "img", logger=get_logger(stage.name)) as bar:
        tracker = ShardTracker(bar, {t.out_path for t in run.built}, stage.postfix)
        with tracker.subscribed(client):
            results = map_tasks(client, stage.build, run.built)
            for task, result in results:
                run.results.append(result)
                tracker.finish(task.out_path, stage.counts(result))
