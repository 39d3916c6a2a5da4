"""Launching the CLI or a check script as several CPU processes under torchrun, as the
multi-process tests (train, evaluate) do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 ARGS`` on free local ports, one thread per process;
    fails the test with the end of stderr when it does not exit 0."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=0",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=127.0.0.1:0",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
