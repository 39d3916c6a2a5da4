"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is one file holding a dict of plain types and tensors only:
format, version, model state, optimiser and scheduler states (by name), the params (plain
nested dict), fingerprint, period, epoch, whether the prototypes are pushed (every
prototype is the embedding of a real training view or patch), RNG states (python, numpy,
torch CPU, CUDA) and an optional ``extra`` dict (e.g. the step index, best metric). It is
written to a temporary file in the same folder, fsynced, then renamed over the target, so
a crash leaves either the old or the new checkpoint, never a torn one.

``torch.save`` writes a zip archive with a CRC-32 per record, but ``torch.load`` does not
check them: :func:`load_checkpoint` verifies every record first, so a flipped byte or a
truncated file is an ArtifactError naming the file, never silently different weights.
"""

from __future__ import annotations

import io
import os
import random
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from model.head import unwrap_model
from pipeline.atomic import atomic_file
from pipeline.errors import ArtifactError

FORMAT = "protomask-checkpoint"
VERSION = 2  # 2: the pushed flag

_PLAIN = (str, int, float, bool, type(None), Tensor)


@dataclass
class Checkpoint:
    """A loaded checkpoint (see the module docstring for the fields)."""

    model: dict[str, Tensor]
    optimizers: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    period: str = ""
    epoch: int = 0
    pushed: bool = False
    rng: Optional[dict[str, Any]] = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    """Python, numpy (global), torch CPU and CUDA generator states as tensors and ints."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA: as many devices as both have)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for device in range(n):
            torch.cuda.set_rng_state(cuda[device], device)


# --------------------------------------------------------------------------- save/load
def _check_plain(obj: Any, where: str) -> None:
    """Refuse what weights_only loading would refuse, naming the key (fail at save time)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where}: key {k!r} is not str or int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"checkpoint {where}: {type(obj).__name__} is not a plain type "
            f"(use str, int, float, bool, None, list, dict or tensor)"
        )


def _canonical(obj: Any) -> Any:
    """A fresh copy of nested dicts/lists/tuples with every string interned, so equal
    payloads pickle to equal bytes (pickle memoises by object identity: a key loaded from a
    checkpoint is another object than the same key written by torch's code)."""
    if isinstance(obj, Mapping):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_canonical(v) for v in obj)
    if type(obj) is str:
        return sys.intern(obj)
    return obj


def save_checkpoint(
    path: Path | str,
    *,
    model: nn.Module,
    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
    schedulers: Optional[Mapping[str, Any]] = None,
    params: Optional[Mapping[str, Any]] = None,
    fingerprint: str = "",
    period: str = "",
    epoch: int = 0,
    pushed: bool = False,
    extra: Optional[Mapping[str, Any]] = None,
    with_rng: bool = True,
) -> None:
    """Write a checkpoint atomically (temp file in the same folder, fsync, os.replace)."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "params": dict(params or {}),
        "fingerprint": str(fingerprint),
        "period": str(period),
        "epoch": int(epoch),
        "pushed": bool(pushed),
        "rng": rng_state() if with_rng else None,
        "extra": dict(extra or {}),
    }
    _check_plain(payload, "checkpoint")
    payload = _canonical(payload)
    path = Path(path)
    buffer = io.BytesIO()  # serialised first: a full disk then fails in a plain write,
    torch.save(payload, buffer)  # an OSError naming the file (torch.save would not say)
    with atomic_file(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass


def verify_checkpoint(path: Path | str) -> None:
    """Check every record of the checkpoint's zip archive against its CRC-32 (one full
    read); ArtifactError naming the file and the damaged record when one does not match."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ArtifactError(
            f"{path}: damaged checkpoint (not a complete archive: "
            f"{' '.join(str(exc).split())[:200]}); rerun train to rebuild "
            f"it"
        ) from None
    if bad is not None:
        raise ArtifactError(
            f"{path}: damaged checkpoint (checksum error in {bad}); rerun train to rebuild it"
        )


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> Checkpoint:
    """Verify, then read a checkpoint (weights_only); ArtifactError naming the file when it
    is missing, damaged, foreign or of an unknown version."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint not found")
    verify_checkpoint(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt / foreign file
        raise ArtifactError(
            f"{path}: not a readable checkpoint ({' '.join(str(exc).split())[:300]})"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a protomask checkpoint")
    if obj.get("version") != VERSION:
        raise ArtifactError(
            f"{path}: checkpoint version {obj.get('version')!r} unknown to "
            f"this code (knows {VERSION}); retrain or use a matching release"
        )
    return Checkpoint(
        model=obj["model"],
        optimizers=obj["optimizers"],
        schedulers=obj["schedulers"],
        params=obj["params"],
        fingerprint=obj["fingerprint"],
        period=obj["period"],
        epoch=obj["epoch"],
        pushed=bool(obj["pushed"]),
        rng=obj["rng"],
        extra=obj["extra"],
    )


def restore(
    checkpoint: Checkpoint,
    *,
    model: Optional[nn.Module] = None,
    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
    schedulers: Optional[Mapping[str, Any]] = None,
    rng: bool = True,
) -> None:
    """Load model / optimiser / scheduler states (those given) and, if ``rng``, RNG states."""
    if model is not None:
        unwrap_model(model).load_state_dict(checkpoint.model)
    for name, opt in (optimizers or {}).items():
        opt.load_state_dict(checkpoint.optimizers[name])
    for name, sched in (schedulers or {}).items():
        sched.load_state_dict(checkpoint.schedulers[name])
    if rng and checkpoint.rng is not None:
        set_rng_state(checkpoint.rng)
