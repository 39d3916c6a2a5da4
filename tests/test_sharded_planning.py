"""Planning a sharded stage is linear in the number of shards (10^5 in well under 1 s)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.hdf5_files import ShardCheck
from pipeline.sharded import ShardedStage, run_shards


@dataclass(frozen=True)
class Task:
    out_path: str
    fingerprint: str

    @property
    def num_images(self) -> int:
        return 32


def test_planning_100k_reused_shards_is_fast(tmp_path: Path) -> None:
    tasks = [Task(str(tmp_path / f"shard-{i:06d}.h5"), "fp") for i in range(100_000)]
    stage = ShardedStage(
        name="probe",
        prefix="shard-",
        check=lambda path, fp: ShardCheck(reusable=True),
        build=lambda task: None,
    )
    started = time.perf_counter()
    run = run_shards(stage, tasks, tmp_path, tmp_path, workers=1, scheduler=None)
    reused = [t for t in tasks if t.out_path not in run.rebuilt]
    elapsed = time.perf_counter() - started
    assert len(reused) == 100_000 and run.built == []
    assert elapsed < 1.0, f"{elapsed:.2f} s to plan 10^5 reused shards"
