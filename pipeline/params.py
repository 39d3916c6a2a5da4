"""The parameter schema: the one place that defines every key of params.yaml.

Each section is a frozen dataclass; each field carries its documentation and its
allowed values (``choices`` or an ``Interval``). :func:`load_params` validates a YAML
file against the schema and raises :class:`ParamsError` with one line naming the key,
the allowed values and the value found. The README's params reference is generated
from these dataclasses (:func:`params_reference_markdown`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.errors import ParamsError
from pipeline.layout import SYNTHETIC_ROOT


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


def param(default: Any, doc: str, *, choices: tuple | None = None,
          interval: Interval | None = None) -> Any:
    """A schema field: default, one-line documentation and allowed values."""
    meta = {"doc": doc, "choices": choices, "interval": interval}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """A nested section (a dataclass) with its defaults."""
    return field(default_factory=cls, metadata={"doc": doc, "choices": None, "interval": None})


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SyntheticParams:
    """The built-in synthetic fine-grained dataset (CUB layout, with ground truth)."""

    seed: int = param(0, "Seed of the generator: same seed, same bytes.",
                      interval=Interval(0, 2**31 - 1))
    num_classes: int = param(10, "Number of classes (distinct part-attribute combinations).",
                             interval=Interval(2, 200))
    images_per_class: int = param(40, "Images generated per class.", interval=Interval(4, 10000))
    image_size: int = param(160, "Side of the square images in pixels.",
                            interval=Interval(64, 1024))
    test_fraction: float = param(0.3, "Share of each class written as test in train_test_split.txt.",
                                 interval=Interval(0, 1, lo_closed=False, hi_closed=False))
    distractors: int = param(5, "Largest number of distractor shapes per image.",
                             interval=Interval(0, 50))


@dataclass(frozen=True)
class DataParams:
    """prepare: which dataset, where, and how it is split."""

    source: str = param("synthetic", "Dataset kind: the built-in synthetic set, CUB-200-2011, "
                        "or class folders (root/<class>/<image>).",
                        choices=("synthetic", "cub", "folder"))
    root: str = param("data/synthetic", "Dataset root. For source synthetic it must be "
                      "data/synthetic, where the synthesize stage writes.")
    seed: int = param(0, "Seed of the validation split (and of the folder train/test split).",
                      interval=Interval(0, 2**31 - 1))
    val_fraction: float = param(0.15, "Share of each class's training images moved to "
                                "validation (stratified).", interval=Interval(0, 0.5, hi_closed=False))
    test_fraction: float = param(0.3, "Share of each class held out as test; source folder only "
                                 "(CUB and synthetic carry their own split).",
                                 interval=Interval(0, 1, lo_closed=False, hi_closed=False))
    max_reject_fraction: float = param(0.05, "prepare fails when more than this share of "
                                       "images cannot be decoded.", interval=Interval(0, 1))
    decode_workers: int = param(2, "Threads decoding images in prepare.",
                                interval=Interval(1, 256))
    synthetic: SyntheticParams = section(SyntheticParams, "The synthetic dataset generator.")





@dataclass(frozen=True)
class Params:
    """The whole params.yaml, one section per stage."""

    data: DataParams = section(DataParams, "Dataset and splits (synthesize, prepare).")

    def check(self) -> None:
        """Rules that tie several keys together."""
        if self.data.source == "synthetic" and Path(self.data.root) != SYNTHETIC_ROOT:
            raise ParamsError(f"data.root must be {SYNTHETIC_ROOT} when data.source is synthetic, "
                              f"got {self.data.root!r}")


# ----------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints accepted as floats)."""
    if typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"schema type {tp} of {key} is not supported")
    if not ok:
        raise ParamsError(f"{key} must be of type {_type_name(tp)}, got {value!r}")
    return value


def build_section(cls: type, raw: Any, prefix: str) -> Any:
    """Validate the mapping ``raw`` against dataclass ``cls``; missing keys take defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix.rstrip('.') or 'the file'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ParamsError(f"unknown key {prefix}{key} (allowed: {allowed})")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = build_section(tp, raw[name], key + ".")
            continue
        value = _coerce(raw[name], tp, key)
        choices, interval = f.metadata.get("choices"), f.metadata.get("interval")
        if value is not None and choices is not None and value not in choices:
            allowed = " | ".join(str(c) for c in choices)
            raise ParamsError(f"{key} must be one of {allowed}, got {value!r}")
        if value is not None and interval is not None and value not in interval:
            raise ParamsError(f"{key} must be in {interval}, got {value!r}")
        values[name] = value
    return cls(**values)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; errors are one line prefixed with the file name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read the params file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    try:
        params = build_section(Params, raw, "")
        params.check()
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    return params


def as_dict(obj: Any) -> dict:
    """A section as plain data (for fingerprints, YAML and metadata)."""
    return dataclasses.asdict(obj)


def fingerprint(*sections: Any) -> str:
    """A short stable hash of one or more sections' values (order of keys ignored)."""
    payload = json.dumps([as_dict(s) for s in sections], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def defaults_yaml() -> str:
    """params.yaml with every default and each key's documentation as a comment."""
    lines = ["# protomask parameters, one section per stage. Generated from the schema in",
             "# pipeline/params.py (python -m pipeline.params > params.yaml); every key is",
             "# validated when a stage starts."]

    def emit(obj: Any, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            doc = f.metadata.get("doc", "")
            allowed = f.metadata.get("choices") or f.metadata.get("interval")
            if allowed is not None and not isinstance(allowed, Interval):
                allowed = " | ".join(map(str, allowed))
            comment = doc + (f" Allowed: {allowed}." if allowed is not None else "")
            lines.append(f"{indent}# {comment}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                emit(value, indent + "  ")
            else:
                dumped = yaml.safe_dump({f.name: value}, default_flow_style=True).strip()
                lines.append(f"{indent}{dumped[1:-1]}")

    emit(Params(), "")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(defaults_yaml(), end="")


def _rows(cls: type, prefix: str) -> list[tuple[str, str, str, str, str]]:
    rows = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(_rows(tp, f"{prefix}{f.name}."))
            continue
        choices, interval = f.metadata.get("choices"), f.metadata.get("interval")
        allowed = (" \\| ".join(map(str, choices)) if choices else
                   str(interval) if interval else "")
        default = getattr(defaults, f.name)
        rows.append((f"{prefix}{f.name}", _type_name(tp), f"`{default!r}`" if default is not None
                     else "`null`", allowed, f.metadata["doc"]))
    return rows


def params_reference_markdown() -> str:
    """The params reference table, generated from the schema (kept in README.md)."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for row in _rows(Params, ""):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
