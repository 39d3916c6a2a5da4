"""The compare stage's work: every model's metrics over the training seeds (mean +- std),
ProtoMask's paired difference to each baseline with its 95 % interval, and the paper's
claims decided from those intervals.

The claims: against each baseline, ProtoMask's saliency lies less on the background and
more on the object, is more consistent, and its accuracy is competitive (at most
``evaluate.verdict_accuracy_margin`` points lower). Each is ``holds``, ``does not hold``
or ``undecided`` (the interval straddles the threshold); there is no verdict, with the
reason, when the evidence is too thin: too few test images, too few training seeds, a
model that abstains on most images or whose accuracy does not lie above chance, or
mostly whole-image views (no usable masks), per params evaluate.verdict_*; the claims'
outcomes are then stated as observations, not findings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from model.formatting import METRICS, format_metric
from model.metric_layout import NATIVE, chance_accuracy, lookup, nested, path_of
from model.seed_stats import Difference, Spread, decide, interval, paired_difference, spread
from pipeline import layout
from pipeline.atomic import atomic_file
from pipeline.errors import ArtifactError
from pipeline.params import EvaluateParams, Params

MODELS = layout.MODELS
REFERENCE = "protomask"  # the model whose claims are checked against every other one
OUTCOMES = ("holds", "does not hold", "undecided", "not measured")  # of a claim
VERDICT_WORDS = {True: "holds", False: "does not hold", None: "undecided"}
REFUSED = "no verdict"  # the verdict's word when the evidence is too thin for one

# (metric, label, better direction or None) of compare's rows (model/formatting.py holds
# the facts); its dotted key in the metrics JSON: path_of
_LABELS = tuple((f.key, f.label, f.better) for f in METRICS if f.compared)
# (dotted key in metrics/evaluate/<model>/seed-<seed>.json, label, better direction or None)
COMPARED = tuple((path_of(key), label, better) for key, label, better in _LABELS)

# The paper's claims: metric and how ProtoMask should compare with each baseline.
CLAIMS = (
    ("background_overlap", "lower"),
    ("object_overlap", "higher"),
    ("consistency", "higher"),
    ("balanced_accuracy", "competitive"),
)

Runs = dict[str, dict[int, dict]]  # model -> training seed -> its metrics/evaluate JSON


@dataclass(frozen=True)
class Verdict:
    """The claims checked: ``holds`` True (all hold against every baseline), False (one
    does not hold), or None with ``reason`` (undecided); ``sentence`` says it all;
    ``refused``: the evidence is too thin for any verdict (``reason`` says why), so each
    claim's outcome is an observation, not a finding."""

    holds: Optional[bool]
    reason: str
    sentence: str
    refused: bool = False

    @property
    def word(self) -> str:
        """holds | does not hold | undecided | no verdict (refused)."""
        return REFUSED if self.refused else VERDICT_WORDS[self.holds]


def number(value: Any) -> Optional[float]:
    """A finite int/float as float; None for anything else (absent metrics, bools)."""
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def per_seed(runs: Runs, model: str, key: str) -> dict[int, float]:
    """seed -> the metric's number (seeds where it is absent or not a number left out)."""
    out = {}
    for seed, doc in runs.get(model, {}).items():
        value = number(lookup(doc, key))
        if value is not None:
            out[seed] = value
    return out


def too_thin(runs: Runs, rules: EvaluateParams) -> Optional[str]:
    """Why the evidence is too thin for a verdict, or None when it is enough."""
    tests = [
        int(lookup(d, path_of("test_images")) or 0)
        for seeds in runs.values()
        for d in seeds.values()
    ]
    if min(tests) < rules.verdict_min_test_images:
        return (
            f"{min(tests)} test images, fewer than the {rules.verdict_min_test_images} a "
            f"verdict needs (evaluate.verdict_min_test_images)"
        )
    seeds = min(len(s) for s in runs.values())
    if seeds < rules.verdict_min_seeds:
        return (
            f"{seeds} training seed{'s' if seeds != 1 else ''} per model, fewer than the "
            f"{rules.verdict_min_seeds} a verdict needs (evaluate.verdict_min_seeds): "
            + (
                "one seed gives no interval"
                if seeds == 1
                else f"{seeds} runs are too few to trust an interval on"
            )
        )
    for model in runs:
        held_back = spread(list(per_seed(runs, model, path_of("abstained")).values()))
        if held_back is not None and held_back.mean > rules.verdict_max_abstained:
            return (
                f"{model} abstains (scores every class equally) on {held_back.mean:.0f} % of "
                f"the test images, more than {rules.verdict_max_abstained:.0f} % "
                f"(evaluate.verdict_max_abstained): its accuracy is a fixed pick, not a "
                f"prediction; train it longer"
            )
    unlearned = [why for why in (at_chance(runs, model) for model in runs) if why is not None]
    if unlearned:
        return (
            "; ".join(unlearned) + ": the explanations of a classifier that has not shown it "
            "learned are no evidence on the claims; train longer or on more data"
        )
    share = spread(list(per_seed(runs, REFERENCE, path_of("fallback_share")).values()))
    if share is not None and share.mean > rules.verdict_max_fallback_share:
        return (
            f"{share.mean:.0f} % of the test images have only whole-image views (no usable "
            f"mask), more than {rules.verdict_max_fallback_share:.0f} % "
            f"(evaluate.verdict_max_fallback_share): check the segment stage"
        )
    return None


def at_chance(runs: Runs, model: str) -> Optional[str]:
    """The fact that ``model``'s balanced accuracy is no evidence that it learned (its 95 %
    interval over the seeds reaches chance, 100 / the test split's classes; with one seed,
    its value), or None when it lies above chance. Claims against such a model compare
    explanations of a classifier that may not have learned: no verdict."""
    classes = {lookup(d, path_of("test_classes")) for d in runs[model].values()}
    if None in classes:
        return (
            f"{model}'s metrics lack {path_of('test_classes')} (written before evaluate "
            f"recorded it): rerun protomask evaluate --model {model}"
        )
    chance = chance_accuracy(max(classes))
    acc = interval(list(per_seed(runs, model, path_of("balanced_accuracy")).values()))
    if acc is None:
        return None  # not measured: the claim on it says so
    low = acc.mean if acc.low is None else acc.low
    if low > chance:
        return None
    spread_of = (
        f"95 % interval {acc.low:.1f} to {acc.high:.1f} over {acc.n} seeds"
        if acc.low is not None
        else "one seed"
    )
    return (
        f"{model}'s balanced accuracy ({acc.mean:.1f} %, {spread_of}) does not lie above "
        f"chance ({chance:.1f} %, {max(classes)} test classes)"
    )


@dataclass(frozen=True)
class Claim:
    """One claim against one baseline: the paired difference and what it says."""

    baseline: str
    key: str
    want: str
    difference: Optional[Difference]
    outcome: str  # holds | does not hold | undecided | not measured

    def sentence(self) -> str:
        label = self.key.replace("_", " ")
        if self.difference is None:
            return f"{label} {self.want}: not measured for both models"
        d = self.difference
        ci = f"95 % CI {d.low:+.2f} to {d.high:+.2f}" if d.low is not None else "no interval"
        seeds = f"{d.n} seed" + ("s" if d.n != 1 else "")
        return f"{label} {self.want}: {self.outcome} ({d.mean:+.2f}, {ci}, {seeds})"


def claims(runs: Runs, rules: EvaluateParams) -> list[Claim]:
    """Every claim against every baseline that was evaluated."""
    out = []
    for baseline in (m for m in MODELS if m in runs and m != REFERENCE):
        for key, want in CLAIMS:
            dotted = path_of(key)
            diff = paired_difference(
                per_seed(runs, REFERENCE, dotted), per_seed(runs, baseline, dotted)
            )
            outcome = (
                "not measured"
                if diff is None
                else decide(diff, want, rules.verdict_accuracy_margin)
            )
            out.append(Claim(baseline, key, want, diff, outcome))
    return out


def verdict(runs: Runs, rules: EvaluateParams, found: Optional[list[Claim]] = None) -> Verdict:
    """The claims (``found``, or computed) decided from the seeds' paired intervals;
    undecided, with the reason, when the evidence is too thin (the observed differences
    are still stated)."""
    if REFERENCE not in runs or len(runs) < 2:
        return Verdict(
            None,
            "only one model was evaluated",
            "No verdict: only one model was evaluated.",
            refused=True,
        )
    found = claims(runs, rules) if found is None else found
    by_baseline: dict[str, list[str]] = {}
    for c in found:
        by_baseline.setdefault(c.baseline, []).append(c.sentence())
    text = "; ".join(f"against {b}: " + ", ".join(v) for b, v in by_baseline.items())
    thin = too_thin(runs, rules)
    if thin is not None:
        return Verdict(
            None,
            thin,
            f"No verdict on the claims: {thin}. Observed (not a finding): {text}.",
            refused=True,
        )
    outcomes = {c.outcome for c in found}
    if "does not hold" in outcomes:
        return Verdict(False, "", f"The claims do not all hold: {text}.")
    if outcomes == {"holds"}:
        return Verdict(True, "", f"The claims hold: {text}.")
    reason = "an interval contains the threshold, or a metric is not measured"
    return Verdict(None, reason, f"Undecided ({reason}): {text}.")


@dataclass(frozen=True)
class Assessment:
    """The claims and the verdict of one set of runs, computed once for every writer."""

    claims: list[Claim]
    verdict: Verdict


def assess(runs: Runs, rules: EvaluateParams) -> Assessment:
    """Every claim and the verdict they give."""
    found = claims(runs, rules)
    return Assessment(found, verdict(runs, rules, found))


def summary_table(runs: Runs) -> dict[str, dict[str, Optional[Spread]]]:
    """model -> metric key -> its spread over the seeds (None when never measured)."""
    return {
        m: {key: spread(list(per_seed(runs, m, key).values())) for key, _, _ in COMPARED}
        for m in MODELS
        if m in runs
    }


def cell(runs: Runs, model: str, key: str) -> str:
    """One table cell: mean +- std over seeds, the single value for one seed, ``k of n``
    seeds for a yes/no metric, or the absent reason / n/a."""
    docs = runs[model]
    raw = [lookup(d, key) for d in docs.values()]
    if raw and all(isinstance(v, bool) for v in raw):
        return f"{sum(raw)} of {len(raw)}"
    s = spread(list(per_seed(runs, model, key).values()))
    if s is None:
        return format_metric(raw[0] if raw else None)
    if s.std is None:
        return format_metric(s.mean)
    return f"{s.mean:.2f} ± {s.std:.2f}"


def compare_document(
    runs: Runs, rules: EvaluateParams, assessed: Optional[Assessment] = None
) -> dict[str, Any]:
    """artifacts/evaluate/comparison.json: seeds, every model's mean/std/n per metric,
    ProtoMask's paired differences with their 95 % intervals, and each claim's outcome."""
    table = summary_table(runs)
    assessed = assess(runs, rules) if assessed is None else assessed
    found, result = assessed.claims, assessed.verdict
    baselines = sorted({c.baseline for c in found})
    return {
        "seeds": {m: sorted(runs[m]) for m in table},
        "models": {
            m: nested({k: v.as_dict() for k, v in keys.items() if v is not None})
            for m, keys in table.items()
        },
        "differences": {
            b: {c.key: c.difference.as_dict() for c in found if c.baseline == b and c.difference}
            for b in baselines
        },
        "claims": {
            b: {f"{c.key} {c.want}": c.outcome for c in found if c.baseline == b} for b in baselines
        },
        "verdict": result.word,
        "reason": result.reason,
    }


def verdict_document(runs: Runs, assessed: Assessment) -> dict[str, Any]:
    """metrics/compare.json, the compare stage's DVC metric (short, for ``dvc metrics
    show``): the verdict, the seeds per model, and how many claims hold, do not hold or are
    undecided; the whole comparison is artifacts/evaluate/comparison.json."""
    outcomes = [c.outcome for c in assessed.claims]
    return {
        "verdict": assessed.verdict.word,
        "seeds": min((len(seeds) for seeds in runs.values()), default=0),
        "claims": {o.replace(" ", "_"): outcomes.count(o) for o in OUTCOMES},  # column names
    }


def comparison_markdown(
    runs: Runs, rules: EvaluateParams, assessed: Optional[Assessment] = None
) -> str:
    """The Markdown comparison: metrics over seeds, paired differences, the claims."""
    assessed = assess(runs, rules) if assessed is None else assessed
    names = [m for m in MODELS if m in runs]
    sources = ", ".join(
        f"`{layout.evaluate_metrics(m, s)}`" for m in names for s in sorted(runs[m])
    )
    lines = [
        "# The models on the test split, over training seeds",
        "",
        f"Generated by `protomask compare` from {sources}. Each cell: mean ± standard "
        "deviation over the seeds (a single value for one seed).",
        "",
        "| metric | " + " | ".join(names) + " | better |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for key, label, better in COMPARED:
        row = (cell(runs, m, key) for m in names)
        lines.append(f"| {label} | " + " | ".join(row) + f" | {better or ''} |")
    refused = assessed.verdict.reason if assessed.verdict.refused else None
    lines += upsampled_table(runs) + differences_table(assessed.claims, refused)
    lines += ["", "## The paper's claims", "", assessed.verdict.sentence, ""]
    first = {m: next(iter(runs[m].values())) for m in names}
    method = {m: lookup(first[m], path_of("saliency")) for m in names}
    lines += [
        f"Saliency: {', '.join(f'{m} {v}' for m, v in method.items())}; test images: "
        + ", ".join(str(lookup(first[m], path_of("test_images"))) for m in names)
        + "; training seeds: "
        + ", ".join(f"{m} {len(runs[m])}" for m in names)
        + ".",
        "",
    ]
    return "\n".join(lines)


def upsampled_table(runs: Runs) -> list[str]:
    """Each model's native maps (upsampled similarity or presence), as its second
    saliency method; models without them (ProtoMask) are left out."""
    native = {
        m: {s: d[NATIVE] for s, d in runs[m].items()}
        for m in runs
        if all(isinstance(d.get(NATIVE), dict) for d in runs[m].values())
    }
    if not native:
        return []
    names = list(native)
    lines = [
        "",
        "Each baseline's native explanation (ProtoPNet's and ProtoPool's upsampled "
        "similarity maps, PIP-Net's upsampled presence maps), as a second saliency method:",
        "",
        "| metric | " + " | ".join(f"{m} (upsampled)" for m in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, label, _ in COMPARED:
        if any(lookup(d, key) is not None for m in names for d in native[m].values()):
            lines.append(f"| {label} | " + " | ".join(cell(native, m, key) for m in names) + " |")
    return lines


def differences_table(found: list[Claim], refused: Optional[str] = None) -> list[str]:
    """ProtoMask minus each baseline, paired by seed: mean [95 % interval] and outcome;
    ``refused``: why there is no verdict, said above the table (its outcomes are then
    observations)."""
    if not found:
        return []
    lines = ["", "## ProtoMask minus each baseline (paired by seed)", ""]
    if refused is not None:
        lines += [
            f"No verdict: {refused}. Each outcome below is what its interval says, an "
            "observation, not a finding.",
            "",
        ]
    lines += [
        "| baseline | metric | claim | difference | 95 % interval | seeds | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in found:
        d = c.difference
        if d is None:
            lines.append(f"| {c.baseline} | {c.key} | {c.want} | n/a | n/a | 0 | not measured |")
            continue
        ci = f"{d.low:+.2f} to {d.high:+.2f}" if d.low is not None else "none (one seed)"
        lines.append(
            f"| {c.baseline} | {c.key} | {c.want} | {d.mean:+.2f} | {ci} | {d.n} | {c.outcome} |"
        )
    intervals = sum(c.difference is not None and c.difference.low is not None for c in found)
    if intervals:
        lines += ["", multiplicity_note(intervals)]
    return lines


def multiplicity_note(intervals: int) -> str:
    """What ``intervals`` separate 95 % intervals mean when they are read together."""
    return (
        f"Each interval is a 95 % interval on its own, not corrected for the {intervals} "
        f"read together: about one in 20 misses its true difference by chance (here "
        f"about {intervals / 20:.1f} of them), so one outcome whose interval ends near its "
        "threshold is weak evidence by itself."
    )


def read_metrics(
    seeds: list[int], project_root: Path = Path("."), models: tuple[str, ...] = MODELS
) -> Runs:
    """metrics/evaluate/<model>/seed-<seed>.json of every model and seed of train.seeds;
    ArtifactError naming a missing or unreadable one."""
    runs: Runs = {}
    for kind in models:
        for seed in seeds:
            path = project_root / layout.evaluate_metrics(kind, seed)
            todo = f"run protomask evaluate --model {kind} --seed {seed}"
            if not path.is_file():
                raise ArtifactError(f"{path}: missing; {todo}")
            try:
                runs.setdefault(kind, {})[seed] = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ArtifactError(f"{path}: not valid JSON ({exc}); {todo}") from None
    return runs


def run_compare(
    params: Params, project_root: Path = Path("."), models: tuple[str, ...] = MODELS
) -> Verdict:
    """Write artifacts/evaluate/comparison.md and .json and metrics/compare.json from the metrics of
    ``models`` (default: all, as the compare stage) over train.seeds; return the verdict."""
    runs = read_metrics(list(params.train.seeds), project_root, models)
    rules = params.evaluate
    assessed = assess(runs, rules)
    with atomic_file(project_root / layout.COMPARISON) as tmp:
        tmp.write_text(comparison_markdown(runs, rules, assessed))
    with atomic_file(project_root / layout.COMPARISON_JSON) as tmp:
        tmp.write_text(json.dumps(compare_document(runs, rules, assessed), indent=2) + "\n")
    with atomic_file(project_root / layout.COMPARE_METRICS) as tmp:
        tmp.write_text(json.dumps(verdict_document(runs, assessed), indent=2) + "\n")
    return assessed.verdict
