"""The compare stage's work: the models' metrics side by side, and the paper's claim.

The claim: ProtoMask's saliency lies less on the background and more on the object, and
is more consistent, than the baseline's. :func:`verdict` decides it from the numbers, and
gives none (saying why) when the evidence is too thin: too few test images, too few
training seeds, or mostly whole-image views (no usable masks), per params evaluate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from model.formatting import format_metric
from pipeline import layout
from pipeline.atomic import atomic_file
from pipeline.errors import ArtifactError
from pipeline.params import EvaluateParams

MODELS = layout.MODELS

# (dotted key in metrics/evaluate/<model>.json, label, better direction or None)
COMPARED = (
    ("accuracy", "balanced accuracy (%)", "higher"),
    ("top3_accuracy", "top-3 accuracy (%)", "higher"),
    ("macro_f1", "macro F1 (%)", "higher"),
    ("global_size", "global size", None),
    ("sparsity", "sparsity (%)", None),
    ("npr", "NPR", None),
    ("vlc", "VLC", None),
    ("intra_pd", "intra PD", None),
    ("inter_pd", "inter PD", None),
    ("object_overlap", "object overlap (%)", "higher"),
    ("background_overlap", "background overlap (%)", "lower"),
    ("ior", "IOR", "higher"),
    ("pointing_game", "pointing game (energy in G, %)", "higher"),
    ("consistency", "consistency (%)", "higher"),
    ("stability", "stability (%)", "higher"),
    ("psc", "PSC (%)", "lower"),
    ("prc", "PRC (ranks)", "lower"),
    ("crc", "CRC (rank)", "lower"),
    ("mask_consistency", "mask consistency (segmenter, %)", None),
    ("randomisation.spearman", "randomisation: Spearman trained vs random", "lower"),
    ("randomisation.passed", "randomisation check passed", None),
    ("fallback_share", "test images with only whole-image views (%)", None),
)

# The paper's claim: metric and the direction ProtoMask should have against the baseline.
CLAIM = (("background_overlap", "lower"), ("object_overlap", "higher"), ("consistency", "higher"))


@dataclass(frozen=True)
class Verdict:
    """The claim checked: ``holds`` True/False, or None with ``reason`` when no verdict."""

    holds: Optional[bool]
    reason: str
    sentence: str


def lookup(doc: dict, dotted: str) -> Any:
    """doc["a"]["b"] for "a.b"; None when a key is missing."""
    node: Any = doc
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def number(value: Any) -> Optional[float]:
    """A finite int/float as float; None for anything else (absent metrics, bools)."""
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def too_thin(docs: dict[str, dict], rules: EvaluateParams) -> Optional[str]:
    """Why the evidence is too thin for a verdict, or None when it is enough."""
    tests = [int(d.get("test_images") or 0) for d in docs.values()]
    if min(tests) < rules.verdict_min_test_images:
        return (
            f"{min(tests)} test images, fewer than the {rules.verdict_min_test_images} a "
            f"verdict needs (evaluate.verdict_min_test_images)"
        )
    seeds = [int(d.get("seeds") or 1) for d in docs.values()]
    if min(seeds) < rules.verdict_min_seeds:
        return (
            f"{min(seeds)} training seed(s) per model, fewer than the "
            f"{rules.verdict_min_seeds} a verdict needs (evaluate.verdict_min_seeds): "
            f"one seed's differences are within seed noise"
        )
    share = number(docs.get("protomask", {}).get("fallback_share"))
    if share is not None and share > rules.verdict_max_fallback_share:
        return (
            f"{share:.0f} % of the test images have only whole-image views (no usable "
            f"mask), more than {rules.verdict_max_fallback_share:.0f} % "
            f"(evaluate.verdict_max_fallback_share): check the segment stage"
        )
    return None


def verdict(docs: dict[str, dict], rules: EvaluateParams) -> Verdict:
    """Whether ProtoMask's background overlap is lower and its object overlap and
    consistency higher than the baseline's, computed from the numbers; no verdict when the
    evidence is too thin (the per-metric directions are still stated, as observations)."""
    if "protomask" not in docs or "protopnet" not in docs:
        return Verdict(
            None, "only one model was evaluated", "No verdict: only one model was evaluated."
        )
    parts, checks = [], []
    for key, want in CLAIM:
        a, b = number(docs["protomask"].get(key)), number(docs["protopnet"].get(key))
        label = key.replace("_", " ")
        if a is None or b is None:
            parts.append(f"{label} cannot be compared (not measured for both models)")
            checks.append(None)
            continue
        holds = a < b if want == "lower" else a > b
        checks.append(holds)
        parts.append(
            f"{label} is {want if holds else ('not ' + want)} for ProtoMask ({a:.2f} vs {b:.2f})"
        )
    thin = too_thin(docs, rules)
    if thin is not None:
        return Verdict(
            None,
            thin,
            f"No verdict on the claim: {thin}. On this run (an "
            f"observation, not a finding): {'; '.join(parts)}.",
        )
    if any(c is None for c in checks):
        return Verdict(
            None, "a claimed metric is missing", f"No verdict on the claim: {'; '.join(parts)}."
        )
    holds = all(checks)
    head = "The claim holds" if holds else "The claim does not hold"
    return Verdict(holds, "", f"{head}: {'; '.join(parts)}.")


def comparison_markdown(docs: dict[str, dict], rules: EvaluateParams) -> str:
    """The Markdown comparison of the models' metrics JSONs, with the claim checked."""
    names = [m for m in MODELS if m in docs]
    lines = [
        "# ProtoMask vs ProtoPNet on the test split",
        "",
        "Generated by `protomask compare` from "
        + ", ".join(f"`{layout.evaluate_metrics(m)}`" for m in names)
        + ".",
        "",
    ]
    lines += [
        "| metric | " + " | ".join(names) + " | better |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for key, label, better in COMPARED:
        values = (format_metric(lookup(docs[m], key)) for m in names)
        lines.append(f"| {label} | " + " | ".join(values) + f" | {better or ''} |")
    if "protopnet" in docs and isinstance(docs["protopnet"].get("upsampled"), dict):
        lines += [
            "",
            "ProtoPNet's classic upsampled similarity maps, as a second saliency "
            "method of the baseline:",
            "",
            "| metric | protopnet (upsampled) |",
            "|---|---|",
        ]
        for key, label, _ in COMPARED:
            value = lookup(docs["protopnet"]["upsampled"], key)
            if value is not None:
                lines.append(f"| {label} | {format_metric(value)} |")
    lines += ["", "## The paper's claim", "", verdict(docs, rules).sentence, ""]
    method = {m: docs[m].get("saliency") for m in names}
    seeds = {m: int(docs[m].get("seeds") or 1) for m in names}
    lines += [
        f"Saliency: {', '.join(f'{m} {v}' for m, v in method.items())}; "
        f"test images: {', '.join(str(docs[m].get('test_images')) for m in names)}; "
        f"training seeds: {', '.join(f'{m} {v}' for m, v in seeds.items())}.",
        "",
    ]
    return "\n".join(lines)


def read_metrics(project_root: Path = Path(".")) -> dict[str, dict]:
    """Every model's metrics/evaluate/<model>.json; ArtifactError naming a missing one."""
    docs = {}
    for kind in MODELS:
        path = project_root / layout.evaluate_metrics(kind)
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; run protomask evaluate --model {kind}")
        try:
            docs[kind] = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"{path}: not valid JSON ({exc}); rerun protomask evaluate --model {kind}"
            ) from None
    return docs


def run_compare(rules: EvaluateParams, project_root: Path = Path(".")) -> Verdict:
    """Write artifacts/evaluate/comparison.md from the models' metrics; return the verdict."""
    docs = read_metrics(project_root)
    with atomic_file(project_root / layout.COMPARISON) as tmp:
        tmp.write_text(comparison_markdown(docs, rules))
    return verdict(docs, rules)
