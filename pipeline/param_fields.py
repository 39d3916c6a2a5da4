"""The building blocks of the params schema: fields with documentation and allowed
values, and the fingerprints of sections (pipeline/params.py defines the schema itself).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``str`` gives the usual bracket notation, e.g. ``[0, 0.5)``."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = True
    hi_closed: bool = True

    def __contains__(self, value: float) -> bool:
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below

    def __str__(self) -> str:
        def fmt(v: float) -> str:
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        left = "[" if self.lo_closed and not math.isinf(self.lo) else "("
        right = "]" if self.hi_closed and not math.isinf(self.hi) else ")"
        return f"{left}{fmt(self.lo)}, {fmt(self.hi)}{right}"


def param(
    default: Any,
    doc: str,
    *,
    choices: tuple | None = None,
    interval: Interval | None = None,
    speed_only: bool = False,
    stage: str | None = None,
) -> Any:
    """A schema field: default, one-line documentation and allowed values.

    ``speed_only`` marks a key that changes only speed or placement (threads, devices,
    batch sizes), never a result: :func:`result_fingerprint` and :func:`result_keys` (the
    DVC params lists) leave it out, so changing it invalidates no finished work.
    ``stage`` names the DVC stage that reads the key when it is not the stage of its
    section (e.g. compare reads some evaluate keys): only that stage's params list has it.
    """
    meta = {
        "doc": doc,
        "choices": choices,
        "interval": interval,
        "speed_only": speed_only,
        "stage": stage,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str, **overrides: Any) -> Any:
    """A nested section (a dataclass) with its defaults; ``overrides`` replace some of
    them (two sections of one class with other defaults, e.g. each model's loss)."""
    return field(
        default_factory=(lambda: dataclasses.replace(cls(), **overrides)) if overrides else cls,
        metadata={
            "doc": doc,
            "choices": None,
            "interval": None,
            "speed_only": False,
            "stage": None,
        },
    )


def choices_of(cls: type, name: str) -> tuple | None:
    """The allowed values of field ``name`` of schema section ``cls``.

    Args:
        cls: a section dataclass, e.g. CropsParams.
        name: one of its fields, e.g. ``fill``.

    Returns:
        The field's ``choices``, or None when it has none.
    """
    (found,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return found.metadata.get("choices")


def as_dict(obj: Any) -> dict:
    """A section as plain data (for fingerprints, YAML and metadata)."""
    return dataclasses.asdict(obj)


def text_fingerprint(text: str) -> str:
    """A short stable hash of a string (16 hex digits of its SHA-256)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(*sections: Any) -> str:
    """A short stable hash of one or more sections' values (order of keys ignored)."""
    return _hash_json([as_dict(s) for s in sections])


def _hash_json(data: Any) -> str:
    return text_fingerprint(json.dumps(data, sort_keys=True, separators=(",", ":")))


def is_speed_only(f: dataclasses.Field) -> bool:
    """Whether a schema field changes only speed or placement, never a result."""
    return bool(f.metadata.get("speed_only"))


def result_dict(obj: Any) -> dict:
    """A section as plain data without its speed-only keys (at any depth)."""
    out = {}
    for f in dataclasses.fields(obj):
        if is_speed_only(f):
            continue
        value = getattr(obj, f.name)
        out[f.name] = result_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def result_fingerprint(*sections: Any) -> str:
    """Like :func:`fingerprint`, but blind to speed-only keys: a cached result stays valid
    when only threads, devices or batch sizes change. Equal to :func:`fingerprint` for
    sections without speed-only keys."""
    return _hash_json([result_dict(s) for s in sections])
