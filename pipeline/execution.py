"""Running shard tasks through dask (a local cluster, or an existing scheduler), which
shards a rerun keeps, and how a stage says that a run is degenerate."""

from __future__ import annotations

import contextlib
import logging
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from pipeline.errors import ProtomaskError
from pipeline.hdf5_files import ShardCheck
from pipeline.params import SegmentParams
from pipeline.progress import get_logger

T = TypeVar("T")
R = TypeVar("R")

# Above this share of images without a mask (segment) or with whole-image views only
# (crops), a stage's summary line carries a warning: the run goes on but says so.
DEGENERATE_SHARE = 0.5


def local_worker_count(params: SegmentParams) -> int:
    """One worker per GPU when the work runs on GPUs, else ``segment.workers``."""
    if params.backend in ("sam", "sam2") and params.device in ("auto", "cuda"):
        import torch

        if torch.cuda.device_count():
            return torch.cuda.device_count()
    return params.workers


class WorkerLossLog(logging.Handler):
    """Turns the dask nanny's note that a worker process died (silenced with the rest of
    dask's logs) into one warning line of ``stage``'s logger; the nanny then restarts the
    worker and dask runs its tasks again."""

    def __init__(self, stage: str) -> None:
        super().__init__(logging.INFO)
        self.stage = stage
        self.losses = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.startswith("Worker process") or "exited with status 0" in message:
            return
        if "killed" not in message and "exited with status" not in message:
            return
        self.losses += 1
        hint = " (often the kernel's out-of-memory killer)" if "signal 9" in message else ""
        get_logger(self.stage).warning(
            "%s: lost a dask worker: %s%s; dask restarts it and runs its tasks again",
            self.stage,
            message,
            hint,
        )


@contextlib.contextmanager
def worker_losses_logged(stage: str) -> Iterator[WorkerLossLog]:
    """Within the block, a local cluster's dead worker processes are logged (see
    :class:`WorkerLossLog`)."""
    nanny = logging.getLogger("distributed.nanny")
    handler = WorkerLossLog(stage)
    old_level = nanny.level
    nanny.addHandler(handler)
    if nanny.getEffectiveLevel() > logging.INFO:
        nanny.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        nanny.removeHandler(handler)
        nanny.setLevel(old_level)


@contextlib.contextmanager
def dask_client(
    workers: int,
    scheduler: str | None = None,
    *,
    scheduler_key: str = "segment.scheduler",
    stage: str = "segment",
) -> Iterator[object]:
    """A dask client: to ``scheduler`` when set, else to a fresh local cluster of
    ``workers`` single-threaded processes, whose worker deaths ``stage``'s logger reports
    in one line each (their statistical profiler off). ``scheduler_key`` names the param
    in errors."""
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ProtomaskError(
                f"{scheduler_key}: cannot reach the dask scheduler at {scheduler} ({exc})"
            ) from None
        with client:
            yield client
        return
    with (
        # no statistical profiler in the workers: it samples every 10 ms and keeps the
        # last 1,000 s of profiles (tens of KiB each), so a worker's memory grew with the
        # run's length (crops workers +83 MiB over a 10^5-image run); nobody reads them
        dask.config.set({"distributed.worker.profile.enabled": False}),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # the scheduler's HTTP server (health, metrics) starts even without a
            # dashboard, on 8787 by default: a free local port instead, so no "port 8787
            # is already in use" warning when another cluster runs
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=50,
        ) as cluster,
        Client(cluster) as client,
        worker_losses_logged(stage),  # only while in use: closing may kill workers
    ):
        yield client


# Tasks submitted and not yet collected, per thread of the cluster: enough to keep every
# worker busy while results come back, few enough that the scheduler's state (a few
# tens of KiB per task) and the plan's pickles do not grow with the dataset.
IN_FLIGHT_PER_THREAD = 4
MIN_IN_FLIGHT = 8


def in_flight_limit(client: object) -> int:
    """Tasks kept submitted at once on ``client``: IN_FLIGHT_PER_THREAD per worker thread
    it has now, at least MIN_IN_FLIGHT (a cluster may still be starting its workers)."""
    threads = sum(client.nthreads().values())
    return max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * threads)


def map_tasks(
    client: object, fn: Callable[[T], R], tasks: Sequence[T], *, in_flight: int | None = None
) -> Iterator[tuple[T, R]]:
    """Run ``fn`` on every task (pure=False: each runs once) and yield (task, result)
    pairs as they finish, keeping at most ``in_flight`` tasks (default
    :func:`in_flight_limit`) submitted and not yet collected: the next task goes in as one
    comes out, so memory does not grow with the number of tasks."""
    from dask.distributed import as_completed

    run = uuid.uuid4().hex[:8]  # a shared scheduler may serve several runs at once
    limit = max(1, in_flight if in_flight is not None else in_flight_limit(client))
    queue = iter(enumerate(tasks))
    running: dict[object, T] = {}

    def submit_next() -> object | None:
        item = next(queue, None)
        if item is None:
            return None
        i, task = item
        future = client.submit(fn, task, pure=False, key=f"{fn.__name__}-{run}-{i}")
        running[future] = task
        return future

    first = [f for f in (submit_next() for _ in range(limit)) if f is not None]
    finished = as_completed(first)
    for future in finished:
        task = running.pop(future)
        result = future.result()
        future.release()
        following = submit_next()
        if following is not None:
            finished.add(following)
        yield task, result


def remove_stale(out_dir: Path, prefix: str, wanted: set[str]) -> None:
    """Delete a crash's temporary leftovers (``.<prefix>...``) and ``<prefix>*`` files of
    ``out_dir`` that the current plan does not name."""
    for path in out_dir.iterdir():
        if path.name.startswith(f".{prefix}") or (
            path.name.startswith(prefix) and path.name not in wanted
        ):
            path.unlink()


class ShardWork(Protocol):
    """A task that writes one shard: where, and the fingerprint it stamps."""

    out_path: str
    fingerprint: str


W = TypeVar("W", bound=ShardWork)


def shards_to_build(
    stage: str, tasks: Sequence[W], check: Callable[[str, str], ShardCheck], project_root: Path
) -> tuple[list[W], list[str]]:
    """The tasks whose shard is missing, stale or damaged (``check`` reads each existing
    shard in full), and the damaged shards' paths. Each damaged shard is named on stderr
    in one line as it is found."""
    todo, damaged = [], []
    for task in tasks:
        found = check(task.out_path, task.fingerprint)
        if found.reusable:
            continue
        todo.append(task)
        if found.damage is not None:
            shown = _shown_path(Path(task.out_path), project_root)
            damaged.append(shown)
            print(
                f"{stage}: {shown} is damaged ({found.damage}); rebuilding it",
                file=sys.stderr,
                flush=True,
            )
    return todo, damaged


def _shown_path(path: Path, project_root: Path) -> str:
    """``path`` relative to the project root when it is inside it."""
    try:
        return str(path.relative_to(project_root))
    except ValueError:
        return str(path)


def percent(share: float) -> str:
    """0.5 -> '50 %', 1 -> '100 %', 0.0417 -> '4.17 %'."""
    return f"{100 * share:.3g} %"


def degenerate_warning(share: float, what: str, advice: str) -> str:
    """'; WARNING: <share> of images <what>; <advice>' when ``share`` is over
    DEGENERATE_SHARE, else '' (appended to a stage's summary line)."""
    if share <= DEGENERATE_SHARE:
        return ""
    return f"; WARNING: {percent(share)} of images {what}; {advice}"
