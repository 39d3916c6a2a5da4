"""segment and crops against an existing dask cluster (a scheduler and two worker
processes on loopback, started with dask's own command-line tools): same bytes as the
local cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import layout
from pipeline.crops import run_crops
from pipeline.segment import run_segment
from tests.mask_shard_checks import assert_same_shards
from tests.tiny_project import make_tiny_project, tiny_crops_params

BIN = Path(sys.executable).parent


@pytest.fixture
def cluster(tmp_path: Path):
    """``dask scheduler`` + two ``dask worker`` processes; yields the scheduler address."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    log = open(tmp_path / "scheduler.log", "w+")
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
        stdout=log,
        stderr=log,
        env=env,
        cwd=tmp_path,
    )
    procs = [scheduler]
    try:
        address = None
        deadline = time.time() + 60
        while address is None and time.time() < deadline:
            log.seek(0)
            found = re.search(r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)", log.read())
            address = found.group(1) if found else None
            time.sleep(0.2)
        assert address, "the dask scheduler did not start"
        for k in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"w{k}",
                    ],
                    env=env,
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def test_existing_cluster_gives_the_local_bytes(
    cluster: str, cropped_project: Path, tmp_path: Path, monkeypatch
) -> None:
    params = tiny_crops_params()
    local = cropped_project  # tiny_crops_params() segmented and cropped on a local cluster
    remote_params = replace(params, segment=replace(params.segment, scheduler=cluster))
    remote = make_tiny_project(tmp_path / "remote", remote_params)
    monkeypatch.chdir(tmp_path)  # the workers' folder is not the project: paths are absolute
    assert run_segment(remote_params, Path("remote"))["shards"] >= 2
    run_crops(remote_params, Path("remote"))
    assert_same_shards(local, remote)
    for name in sorted(p.name for p in (local / layout.CROPS_DIR).iterdir()):
        assert (local / layout.CROPS_DIR / name).read_bytes() == (
            remote / layout.CROPS_DIR / name
        ).read_bytes(), name


def test_an_unreachable_scheduler_is_named(tmp_path: Path, monkeypatch) -> None:
    import dask.distributed

    from pipeline.errors import ProtomaskError

    # the stage gives a scheduler 10 s to answer; nothing listens on port 9: a 1 s wait
    # ends in the same error
    real_client = dask.distributed.Client

    def impatient(address, timeout=None, **kwargs):
        return real_client(address, timeout="1s", **kwargs)

    monkeypatch.setattr(dask.distributed, "Client", impatient)
    params = tiny_crops_params(segment={"scheduler": "tcp://127.0.0.1:9"})
    project = make_tiny_project(tmp_path / "p", params)
    with pytest.raises(
        ProtomaskError,
        match="segment.scheduler: cannot reach the dask scheduler at tcp://127.0.0.1:9",
    ):
        run_segment(params, project)
