"""Running shard tasks through dask: a local cluster, or an existing scheduler."""
from __future__ import annotations

import contextlib
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
def dask_client(params: SegmentParams) -> Iterator["object"]:
    """A dask client: to ``segment.scheduler`` when set, else to a fresh local cluster."""
    from dask.distributed import Client, LocalCluster

    if params.scheduler:
        try:
            client = Client(params.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ProtomaskError(f"segment.scheduler: cannot reach the dask scheduler at "
                                 f"{params.scheduler} ({exc})") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=local_worker_count(params), threads_per_worker=1,
                      processes=True, dashboard_address=None, silence_logs=50) as cluster, \
            Client(cluster) as client:
        yield client


def map_tasks(client: "object", fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
    """Submit every task (pure=False: each runs once) and yield results as they finish."""
    from dask.distributed import as_completed

    futures = [client.submit(fn, task, pure=False, key=f"{fn.__name__}-{i}")
               for i, task in enumerate(tasks)]
    for future in as_completed(futures):
        yield future.result()
