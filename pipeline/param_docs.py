"""What is generated from the params schema: each DVC stage's params list, params.yaml
with every default (``python -m pipeline.params``) and the README's params reference
(``python -m pipeline.params --readme``).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.layout import MODELS
from pipeline.param_fields import Interval, is_speed_only
from pipeline.param_loading import type_name
from pipeline.params import Params


def _section_class(dotted: str) -> type:
    """The dataclass of a dotted section name, e.g. ``segment.sam``."""
    cls: Any = Params
    for name in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hint = typing.get_type_hints(cls).get(name)
        if name not in fields or not dataclasses.is_dataclass(hint):
            raise KeyError(f"{dotted} is not a section of the params schema")
        cls = hint
    return cls


def _is_plain(cls: type) -> bool:
    """A section without speed-only keys and without keys read by another stage."""
    hints = typing.get_type_hints(cls)
    return all(
        not is_speed_only(f)
        and f.metadata.get("stage") is None
        and (not dataclasses.is_dataclass(hints[f.name]) or _is_plain(hints[f.name]))
        for f in dataclasses.fields(cls)
    )


def result_keys(section: str, stage: str | None = None) -> list[str]:
    """The dotted keys of ``section`` that can change a result, in schema order.

    A subsection without speed-only keys is named whole (``segment.classical``), as DVC
    tracks a mapping; a section without any is just its own name (``crops``). With
    ``stage``, only the keys marked as read by that stage (``param(stage=...)``); without,
    only the unmarked ones (read by the section's own stage).
    """
    cls = _section_class(section)
    if _is_plain(cls):
        return [section] if stage is None else []
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        dotted = f"{section}.{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(result_keys(dotted, stage))
        elif not is_speed_only(f) and f.metadata.get("stage") == stage:
            keys.append(dotted)
    return keys


def speed_only_keys(section: str = "") -> list[str]:
    """The dotted speed-only keys below ``section`` (all of them by default)."""
    cls = _section_class(section) if section else Params
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        dotted = f"{section}.{f.name}" if section else f.name
        if is_speed_only(f):
            keys.append(dotted)
        elif dataclasses.is_dataclass(hints[f.name]):
            keys.extend(speed_only_keys(dotted))
    return keys


MODEL_ITEM = "train.${item.model}"  # the train stage's own model section (DVC matrix)


def train_keys() -> list[str]:
    """train's result keys with the models' sections (train.<model>) replaced by the one
    of the stage's matrix item: tuning one model reruns only that model's stages."""
    models = set(MODELS)
    keys = [k for k in result_keys("train") if k.split(".")[1] not in models]
    at = next(i for i, k in enumerate(result_keys("train")) if k.split(".")[1] in models)
    return keys[:at] + [MODEL_ITEM] + keys[at:]


def dvc_stage_params() -> dict[str, list[str]]:
    """Each DVC stage's ``params:`` list in dvc.yaml: exactly the keys that change its
    results, so a speed-only change (``dvc exp run -S train.loader_workers=4``) reruns
    nothing. prepare reads the dataset at data.root (a dep), not the generator's settings.
    train.seeds is compare's only: train and evaluate get their seed from the DVC matrix
    (the stage command), so adding a seed reruns no finished (model, seed) stage."""
    return {
        "synthesize": ["data.source", "data.synthetic"],
        "prepare": [k for k in result_keys("data") if k != "data.synthetic"],
        "segment": result_keys("segment"),
        "crops": result_keys("crops"),
        "train": train_keys(),
        "evaluate": result_keys("evaluate"),
        "compare": result_keys("evaluate", stage="compare") + result_keys("train", stage="compare"),
    }


SPEED_ONLY_NOTE = "Speed only: changes no result, so DVC reruns nothing for it."


def defaults_yaml() -> str:
    """params.yaml with every default and each key's documentation as a comment."""
    lines = [
        "# protomask parameters, one section per stage. Generated from the schema in",
        "# pipeline/params.py (python -m pipeline.params > params.yaml); every key is",
        "# validated when a stage starts.",
    ]

    def emit(obj: Any, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            doc = f.metadata.get("doc", "")
            allowed = f.metadata.get("choices") or f.metadata.get("interval")
            if allowed is not None and not isinstance(allowed, Interval):
                allowed = " | ".join(map(str, allowed))
            each = "distinct values, each " if isinstance(value, list) else ""
            comment = doc + (f" Allowed: {each}{allowed}." if allowed is not None else "")
            comment += f" {SPEED_ONLY_NOTE}" if is_speed_only(f) else ""
            lines.append(f"{indent}# {comment}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                emit(value, indent + "  ")
            else:
                dumped = yaml.safe_dump({f.name: value}, default_flow_style=True).strip()
                lines.append(f"{indent}{dumped[1:-1]}")

    emit(Params(), "")
    return "\n".join(lines) + "\n"


def _rows(defaults: Any, prefix: str) -> list[tuple[str, str, str, str, str]]:
    """The reference rows of a section's default instance (a section may override the
    defaults of its class, e.g. each model's loss)."""
    rows = []
    cls = type(defaults)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(_rows(getattr(defaults, f.name), f"{prefix}{f.name}."))
            continue
        choices, interval = f.metadata.get("choices"), f.metadata.get("interval")
        allowed = " \\| ".join(map(str, choices)) if choices else str(interval) if interval else ""
        default = getattr(defaults, f.name)
        meaning = f.metadata["doc"] + (f" {SPEED_ONLY_NOTE}" if is_speed_only(f) else "")
        meaning = meaning.replace("|", "\\|")  # a literal bar, not a new cell
        rows.append(
            (
                f"{prefix}{f.name}",
                type_name(tp),
                f"`{default!r}`" if default is not None else "`null`",
                allowed,
                meaning,
            )
        )
    return rows


def params_reference_markdown() -> str:
    """The params reference table, generated from the schema (kept in README.md)."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for row in _rows(Params(), ""):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


README_MARKERS = ("<!-- params-reference:start -->\n", "<!-- params-reference:end -->")


def readme_with_reference(text: str) -> str:
    """README text with the block between the markers replaced by the generated table."""
    start, end = README_MARKERS
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}{params_reference_markdown()}\n{end}{tail}"


def main(argv: list[str]) -> None:
    """``python -m pipeline.params``: print params.yaml with every default;
    ``--readme``: regenerate the params reference in README.md."""
    if argv == ["--readme"]:
        readme = Path("README.md")
        readme.write_text(readme_with_reference(readme.read_text()))
    else:
        print(defaults_yaml(), end="")
