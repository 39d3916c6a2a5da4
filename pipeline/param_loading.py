"""Reading and validating params files against the schema: YAML parsing (duplicate keys,
YAML 1.2 floats), type and allowed-value checks, and the path rules of the schema.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError

# ----------------------------------------------------------------- path rules
NAME_MAX = 255  # bytes of one path component (Linux, macOS, Windows)
PATH_MAX = 4096  # bytes of a whole path (Linux)


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted, shortened to ``limit`` characters for a one-line message."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_path_length(key: str, value: str) -> None:
    """Refuse a path no filesystem can hold: a component over NAME_MAX or the whole path
    over PATH_MAX bytes (as the filesystem encodes it)."""
    encoded = os.fsencode(value)
    if len(encoded) > PATH_MAX:
        raise ParamsError(
            f"{key} is {len(encoded)} bytes long, more than a path may have "
            f"({PATH_MAX}): use a shorter path, got {_shown(value)}"
        )
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            raise ParamsError(
                f"{key} has a path component of {len(part)} bytes, more than a "
                f"file name may have ({NAME_MAX}): use a shorter path, got "
                f"{_shown(value)}"
            )


def within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it: by the text of both paths, and by
    their real locations seen from the current folder (symlinks followed)."""

    def inside(a: Path, b: Path) -> bool:
        return a == b or b in a.parents

    if inside(Path(os.path.normpath(path)), Path(os.path.normpath(folder))):
        return True
    try:
        return inside(Path(path).resolve(), Path(folder).resolve())
    except (OSError, RuntimeError):  # unreadable or a symlink loop: the text decided
        return False


# ----------------------------------------------------------------- validation
def type_name(tp: Any) -> str:
    """The name of a schema annotation as messages and the README show it (``int or null``)."""
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints accepted as floats)."""
    if typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list) or not value:
            raise ParamsError(f"{key} must be a non-empty list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
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
        raise ParamsError(f"{key} must be of type {type_name(tp)}, got {value!r}")
    return value


def build_section(cls: type, raw: Any, prefix: str, default: Any = None) -> Any:
    """Validate the mapping ``raw`` against dataclass ``cls``; missing keys take their
    values from ``default`` (the section's default instance; None: ``cls()``)."""
    base = cls() if default is None else default
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
            values[name] = build_section(tp, raw[name], key + ".", getattr(base, name))
            continue
        value = _coerce(raw[name], tp, key)
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            _check_allowed(f, f"{key}[{index}]" if isinstance(value, list) else key, item)
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ParamsError(f"{key} lists a value twice: {value!r}")
        values[name] = value
    return dataclasses.replace(base, **values)


def _check_allowed(f: dataclasses.Field, key: str, value: Any) -> None:
    """ParamsError when ``value`` is outside the field's choices or interval."""
    choices, interval = f.metadata.get("choices"), f.metadata.get("interval")
    if value is not None and choices is not None and value not in choices:
        allowed = " | ".join(str(c) for c in choices)
        raise ParamsError(f"{key} must be one of {allowed}, got {value!r}")
    if value is not None and interval is not None and value not in interval:
        raise ParamsError(f"{key} must be in {interval}, got {value!r}")


# ------------------------------------------------------------------- reading
class DuplicateKeyError(yaml.YAMLError):
    """A mapping of the params file names one key twice."""


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two changes for params files.

    - A key written twice in one mapping (at any depth) is an error naming the dotted key
      and both lines, where plain PyYAML silently keeps the last value.
    - Scientific notation without a dot or without an exponent sign (``1e-4``, ``3E5``,
      ``1.5e3``) is a float, as in YAML 1.2, which DVC reads; YAML 1.1 (PyYAML) reads
      it as a string.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "", set())
        return super().construct_document(node)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _refuse_duplicate_keys(node: yaml.Node, prefix: str, seen: set[int]) -> None:
    """Raise DuplicateKeyError for the first key written twice in a mapping below ``node``."""
    if id(node) in seen:  # an alias to a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{prefix.rstrip('.')}[{index}].", seen)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            _refuse_duplicate_keys(value_node, prefix, seen)
            continue
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise DuplicateKeyError(
                f"key {prefix}{key} is written twice (lines {lines[key]} and {line}): keep one"
            )
        lines[key] = line
        _refuse_duplicate_keys(value_node, f"{prefix}{key}.", seen)


def read_params_yaml(path: Path) -> Any:
    """The parsed params file; every problem is a one-line ParamsError naming ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read the params file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParamsError(
            f"{path}: not UTF-8 text (line {line}, byte {exc.start}): save it as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=ParamsLoader)
    except DuplicateKeyError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        raise ParamsError(
            f"{path}: the file holds no settings (empty or only comments); "
            "write the defaults with: python -m pipeline.params > params.yaml"
        )
    return raw
