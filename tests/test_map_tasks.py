"""pipeline.execution.map_tasks keeps a bounded number of tasks on the scheduler, so a
plan of 10^5 shards does not hold 10^5 tasks' state at once, and still runs each once."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from pipeline.execution import in_flight_limit, map_tasks

SEEN: list[int] = []
LOCK = threading.Lock()
SCHEDULER: list[object] = []  # the in-process cluster's scheduler, read by the tasks


@pytest.fixture(scope="module")
def client():
    """An in-process dask cluster: one worker with two threads (fast to start)."""
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=50,
        ) as cluster,
        Client(cluster) as client,
    ):
        SCHEDULER[:] = [cluster.scheduler]
        yield client


def tasks_on_scheduler(task: int) -> int:
    """Runs on the in-process worker: how many tasks the scheduler holds now."""
    held = len(SCHEDULER[0].tasks)
    with LOCK:
        SEEN.append(task)
    return held


def test_at_most_in_flight_tasks_are_submitted_and_each_runs_once(client) -> None:
    SEEN.clear()
    pairs = list(map_tasks(client, tasks_on_scheduler, list(range(40)), in_flight=3))
    assert sorted(task for task, _ in pairs) == list(range(40))
    assert sorted(SEEN) == list(range(40))  # each task ran exactly once
    assert max(held for _, held in pairs) <= 3, [held for _, held in pairs]


def test_without_a_bound_the_scheduler_would_hold_them_all(client) -> None:
    """The probe sees what it should: with the window as wide as the plan, tasks pile up."""
    pairs = list(map_tasks(client, tasks_on_scheduler, list(range(40)), in_flight=40))
    assert max(held for _, held in pairs) > 3


def test_the_default_limit_follows_the_cluster_threads(client) -> None:
    assert in_flight_limit(client) == 8  # 4 per thread x 2 threads, the floor of 8
    threads = lambda counts: SimpleNamespace(nthreads=lambda: counts)  # noqa: E731
    assert in_flight_limit(threads({"a": 3, "b": 2})) == 20  # 4 per thread
    assert in_flight_limit(threads({})) == 8  # workers still starting: the floor
