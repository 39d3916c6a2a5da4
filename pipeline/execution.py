"""Running shard tasks through dask: a local cluster, or an existing scheduler."""
from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from pipeline.errors import ProtomaskError
from pipeline.params import SegmentParams

T = TypeVar("T")
R = TypeVar("R")


def local_worker_count(params: SegmentParams) -> int:
    """One worker per GPU when the work runs on GPUs, else ``segment.workers``."""
    if params.backend == "sam" and params.device in ("auto", "cuda"):
        import torch

        if torch.cuda.device_count():
            return torch.cuda.device_count()
    return params.workers


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None = None, *,
                scheduler_key: str = "segment.scheduler") -> Iterator["object"]:
    """A dask client: to ``scheduler`` when set, else to a fresh local cluster of
    ``workers`` single-threaded processes. ``scheduler_key`` names the param in errors."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ProtomaskError(f"{scheduler_key}: cannot reach the dask scheduler at "
                                 f"{scheduler} ({exc})") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1,
                      processes=True, dashboard_address=None, silence_logs=50) as cluster, \
            Client(cluster) as client:
        yield client


def map_tasks(client: "object", fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
    """Submit every task (pure=False: each runs once) and yield results as they finish."""
    from dask.distributed import as_completed

    run = uuid.uuid4().hex[:8]      # a shared scheduler may serve several runs at once
    futures = [client.submit(fn, task, pure=False, key=f"{fn.__name__}-{run}-{i}")
               for i, task in enumerate(tasks)]
    for future in as_completed(futures):
        yield future.result()


def remove_stale(out_dir: Path, prefix: str, wanted: set[str]) -> None:
    """Delete a crash's temporary leftovers (``.<prefix>...``) and ``<prefix>*`` files of
    ``out_dir`` that the current plan does not name."""
    for path in out_dir.iterdir():
        if path.name.startswith(f".{prefix}") or (path.name.startswith(prefix)
                                                  and path.name not in wanted):
            path.unlink()
