"""HTML of the evaluate report's page (:mod:`model.report`): the frame, the links to the
other models' pages, the comparison and the training curves, the header, the metrics
table with full names, better direction and meaning, ProtoPNet-style contribution tables
and the per-class global view. Plain HTML, no script and no external resource."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from model.formatting import REPORT, facts_of, format_metric
from model.metric_layout import GROUPS, HEADLINE, chance_accuracy, value_of
from model.report_evidence import Contribution
from pipeline import layout

ARROWS = {"higher": "&uarr; higher", "lower": "&darr; lower", None: ""}


class Tiles(Protocol):
    """What a section draws with: an image tile registered under a name, class names."""

    def img(self, name: str, pixels: np.ndarray, caption: str, width: int = ...) -> str: ...

    def class_label(self, c: int) -> str: ...


def page(title: str, body: list[str]) -> str:
    """The whole index.html."""
    return _PAGE.format(title=html.escape(title), body="\n".join(body))


def class_label(names: list[str], c: int) -> str:
    """A class's name (underscores as spaces, the raw name as its tooltip), or its index."""
    if not 0 <= c < len(names):
        return str(c)
    shown = html.escape(names[c].replace("_", " "))
    return f"<span title='{html.escape(names[c])}'>{shown}</span>"


def _relative(target: Path, kind: str, seed: int) -> str:
    return Path(os.path.relpath(target, layout.evaluate_dir(kind, seed))).as_posix()


def links(kind: str, seed: int, project_root: Optional[Path]) -> str:
    """Links to the other models' pages of this seed, the comparison and the training
    curves of this run (the curves train wrote, when the project is known)."""
    models = " | ".join(
        f"<b>{m}</b>"
        if m == kind
        else f"<a href='{_relative(layout.evaluate_dir(m, seed) / 'index.html', kind, seed)}'>{m}</a>"
        for m in layout.MODELS
    )
    curves_dir = layout.train_dir(kind, seed) / "curves"
    names = []
    if project_root is not None and (project_root / curves_dir).is_dir():
        names = sorted(p.name for p in (project_root / curves_dir).glob("*.png"))
    curves = ", ".join(
        f"<a href='{_relative(curves_dir / n, kind, seed)}'>{html.escape(n)}</a>" for n in names
    )
    return (
        f"<nav id='links'>Models (seed {seed}): {models} &middot; "
        f"<a href='{_relative(layout.COMPARISON, kind, seed)}'>comparison.md</a> &middot; "
        f"training curves: {curves or 'none written'} &middot; on this page: "
        "<a href='#metrics'>metrics</a>, <a href='#classes'>prototypes by class</a>, "
        "<a href='#prototypes'>prototypes</a>, <a href='#images'>test images</a></nav>"
    )


def header(title: str, metrics: dict, top_fraction: float) -> str:
    """The page title and what the overlays show."""
    run = {k: value_of(metrics, k) for k in GROUPS["run"]}
    method = run["saliency"]
    if method == "prp":
        method = f"PRP ({run['lrp_composite']})"
    classes = run["test_classes"]
    chance = (
        f" in {classes} classes (chance: {chance_accuracy(classes):.1f}% balanced accuracy)"
        if classes
        else ""
    )
    return (
        f"<h1>{title}: explanations on the test split</h1>"
        f"<p>{run['test_images']} test images{chance}, checkpoint "
        f"<code>{run['checkpoint']}</code>, saliency {html.escape(str(method))}, "
        f"top-{run['top_k']} prototypes per image. Overlays: heat = positive "
        f"saliency (scaled to its 99.5th percentile), white outline = S (top "
        f"{100 * top_fraction:g}% pixels), green outline = ground-truth object.</p>"
    )


def metrics_table(metrics: dict) -> str:
    """The headline metrics, then every other metric in a folded table: full name (the
    JSON key below it), value, better direction, meaning; the run's settings are in the
    header."""
    rows = [(k, v) for k, v in flatten(metrics) if not k.startswith("run.")]
    headline = [(k, v) for k, v in rows if k in HEADLINE]
    rest = [(k, v) for k, v in rows if k not in HEADLINE]
    return (
        "<h2 id='metrics'>Metrics</h2>"
        + _metric_rows(headline)
        + f"<details><summary>all {len(rest)} other metrics (also <code>metrics.json</code>; "
        "README: Metrics)</summary>" + _metric_rows(rest) + "</details>"
    )


def _metric_rows(items: list[tuple[str, Any]]) -> str:
    rows = []
    for key, value in items:
        facts = facts_of(key)
        name = html.escape(facts.label) if facts else ""
        where = "native maps: " if key.startswith("native.") else ""
        rows.append(
            f"<tr><td>{where}{name}<br><code>{html.escape(key)}</code></td>"
            f"<td>{html.escape(format_metric(value, REPORT))}</td>"
            f"<td>{ARROWS[facts.better] if facts else ''}</td>"
            f"<td>{html.escape(facts.meaning) if facts else ''}</td></tr>"
        )
    return (
        "<table class='m'><tr><th>metric</th><th>value</th><th>better</th><th>meaning</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def flatten(doc: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of a nested metrics document, an absent metric as one value."""
    out = []
    for key, value in doc.items():
        if isinstance(value, dict) and "absent" not in value:
            out.extend(flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def contribution_table(
    tiles: Tiles, role: str, cls: int, logit: float, rows: list[Contribution], unit: str
) -> str:
    """ProtoPNet's local analysis for one class: its top units by contribution."""
    slot = unit == "slot"  # a slot names its pool prototype too
    body = "".join(
        f"<tr><td>{r.unit}</td>{f'<td>{r.prototype}</td>' if slot else ''}"
        f"<td>{r.score:.4g}</td><td>{r.weight:.4g}</td><td><b>{r.contribution:.4g}</b></td></tr>"
        for r in rows
    )
    return (
        f"<div class='evidence'><div>{role}: {tiles.class_label(cls)} (logit {logit:.4g})</div>"
        f"<table class='m'><tr><th>{unit}</th>{'<th>prototype</th>' if slot else ''}"
        f"<th>similarity</th><th>weight</th><th>contribution</th></tr>{body}</table></div>"
    )


def class_section(tiles: Tiles, entries: list[dict], unit: str, pushed: bool, note: str) -> str:
    """Per class: its units (slots or prototypes) with the prototype as pushed, the weight
    to the class, and duplicate flags; ``entries`` as built by the report."""
    shown = "its prototype as pushed (view or patch)" if pushed else "its prototype's index"
    same = "same push source, or " if pushed else ""
    parts = [
        "<h2 id='classes'>Prototypes by class</h2><p>Each row: a class, then each "
        f"{unit} of its classification layer with {shown} and its weight to the class; "
        f"<span class='dup'>duplicates</span> are flagged ({same}similarity within 1e-3 on "
        f"most test inputs).{note}</p>"
    ]
    for entry in entries:
        cells = []
        for u in entry["units"]:
            flag = ""
            if u["duplicate"] is not None:
                flag = (
                    f"<br><span class='dup'>duplicate of {u['duplicate'].of}: "
                    f"{html.escape(u['duplicate'].reason)}</span>"
                )
            name = f"prototype {u['prototype']}"
            if unit == "slot":
                name = f"slot {u['unit']}: {name}"
            caption = f"{name}<br>weight {u['weight']:.3g}{flag}"
            if u["pixels"] is not None:
                cells.append(tiles.img(u["name"], u["pixels"], caption, 64))
            else:
                cells.append(f"<figure class='text'><figcaption>{caption}</figcaption></figure>")
        parts.append(
            f"<div class='row'><div class='label'>class {tiles.class_label(entry['class'])}"
            f"<br>{entry['summary']}</div>{''.join(cells)}</div>"
        )
    return "\n".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
h2 {{ border-bottom: 1px solid #ccc; margin-top: 1.6em; }}
nav {{ font-size: 13px; padding: 4px 0; border-bottom: 1px solid #ccc; }}
.row {{ display: flex; flex-wrap: wrap; align-items: flex-start; gap: 6px;
        border-bottom: 1px solid #eee; padding: 8px 0; }}
.label {{ width: 120px; font-weight: bold; font-size: 12px; align-self: center;
          overflow-wrap: anywhere; }}
figure {{ margin: 0; text-align: center; width: min-content; }}
figure.text {{ width: 96px; align-self: center; }}
figcaption {{ font-size: 10px; line-height: 1.2; overflow-wrap: anywhere; min-width: 64px; }}
img {{ image-rendering: pixelated; border: 1px solid #999; display: block; }}
table.m {{ border-collapse: collapse; font-size: 12px; }}
table.m td, table.m th {{ border: 1px solid #ddd; padding: 2px 6px; }}
.evidence {{ font-size: 12px; max-width: 420px; }}
.dup {{ color: #b00; font-weight: bold; }}
</style></head>
<body>
{body}
</body></html>
"""
