"""pipeline.execution.map_tasks keeps a bounded number of tasks submitted and not yet
collected, so a plan of 10^5 shards does not hold 10^5 tasks' state at once, and still
runs each once."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from pipeline.execution import in_flight_limit, map_tasks

SEEN: list[int] = []
LOCK = threading.Lock()


class CountingClient:
    """The client as map_tasks sees it, counting the futures it submitted and has not
    released yet. Counted on the client, where map_tasks acts: the scheduler's task table
    learns of a release asynchronously, so reading it would count collected tasks too."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.outstanding = 0
        self.lock = threading.Lock()

    def submit(self, fn, *args, **kwargs):
        future = self.client.submit(fn, *args, **kwargs)
        with self.lock:
            self.outstanding += 1
        release = future.release
        released = []

        def counted_release() -> None:  # dask calls it again when the future is deleted
            with self.lock:
                if not released:
                    released.append(True)
                    self.outstanding -= 1
            release()

        future.release = counted_release
        return future

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)


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
        yield client


COUNTER: list[CountingClient] = []  # the counting client of the running test


def outstanding_when_run(task: int) -> int:
    """Runs on the in-process worker: how many tasks map_tasks has submitted and not
    collected while this one runs (itself included)."""
    held = COUNTER[0].outstanding
    with LOCK:
        SEEN.append(task)
    return held


def run_counted(client: object, in_flight: int) -> list[tuple[int, int]]:
    SEEN.clear()
    COUNTER[:] = [CountingClient(client)]
    return list(map_tasks(COUNTER[0], outstanding_when_run, list(range(40)), in_flight=in_flight))


def test_at_most_in_flight_tasks_are_submitted_and_each_runs_once(client) -> None:
    pairs = run_counted(client, in_flight=3)
    assert sorted(task for task, _ in pairs) == list(range(40))
    assert sorted(SEEN) == list(range(40))  # each task ran exactly once
    assert max(held for _, held in pairs) <= 3, [held for _, held in pairs]
    assert COUNTER[0].outstanding == 0  # every future released once collected


def test_without_a_bound_every_task_would_be_outstanding(client) -> None:
    """The probe sees what it should: with the window as wide as the plan, all 40 are
    submitted before the first is collected."""
    pairs = run_counted(client, in_flight=40)
    assert max(held for _, held in pairs) == 40


def test_the_default_limit_follows_the_cluster_threads(client) -> None:
    assert in_flight_limit(client) == 8  # 4 per thread x 2 threads, the floor of 8
    threads = lambda counts: SimpleNamespace(nthreads=lambda: counts)  # noqa: E731
    assert in_flight_limit(threads({"a": 3, "b": 2})) == 20  # 4 per thread
    assert in_flight_limit(threads({})) == 8  # workers still starting: the floor
