"""Thin click commands, one per DVC stage, under the one ``protomask`` CLI.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: PyTorch's
OpenMP threads otherwise spin while they wait, which made evaluate 5-10x slower on a busy
CPU. It is set here, before any stage imports torch, so ``dvc repro``, ``dvc exp run``,
``protomask <stage>`` and torchrun all get it (child processes inherit it).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
