"""Metric values as text: one formatter for the comparison table, the evaluate report and
the stages' one-line summaries, each a :class:`MetricStyle`.

A value is a number, a bool, None (not computed) or ``{"absent": reason}`` (the metrics
JSON's absent metric); anything else is shown as ``str(value)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class MetricStyle:
    """How :func:`format_metric` writes each kind of value."""

    number: str  # format spec of a number
    integer: Optional[str]  # format spec of an int (None: ``number``)
    whole: Optional[str]  # format spec of an integer-valued number (int or
    # float) of magnitude 1 or more (None: no rule)
    absent: str  # template with {reason}
    none: str  # None
    booleans: Optional[tuple[str, str]]  # (true, false); None: a bool is a number


# artifacts/evaluate/comparison.md
TABLE = MetricStyle(".2f", None, ".0f", "absent ({reason})", "n/a", ("yes", "no"))
# the evaluate report's metrics table (index.html)
REPORT = MetricStyle(".4g", "d", None, "absent: {reason}", "None", ("True", "False"))
# the stages' one-line summaries
SHORT = MetricStyle(".1f", None, None, "absent", "None", None)


def format_metric(value: Any, style: MetricStyle = TABLE) -> str:
    """A metric value as text.

    Args:
        value: the metric (as in a metrics JSON).
        style: TABLE, REPORT, SHORT or another MetricStyle.

    Returns:
        The text.
    """
    if value is None:
        return style.none
    if isinstance(value, dict) and "absent" in value:
        return style.absent.format(reason=value["absent"])
    if isinstance(value, bool) and style.booleans is not None:
        return style.booleans[0] if value else style.booleans[1]
    if not isinstance(value, (int, float)):
        return str(value)
    if style.whole is not None and float(value).is_integer() and abs(value) >= 1:
        return format(value, style.whole)
    if isinstance(value, int) and style.integer is not None:
        return format(value, style.integer)
    return format(value, style.number)


@dataclass(frozen=True)
class MetricFacts:
    """What a reader needs to know about a metric: its key (dotted within its group for a
    key of a dict metric, e.g. ``randomisation.spearman``), full name with unit, the better
    direction (``higher``, ``lower`` or None: no better side) and a one-line meaning."""

    key: str
    label: str
    better: Optional[str]
    meaning: str
    compared: bool = True  # a row of compare's table


# Every metric of metrics/evaluate/<model>/seed-<seed>.json that compare and the report
# name (README: Metrics); S = the top evaluate.top_fraction saliency pixels, G = the object.
METRICS: tuple[MetricFacts, ...] = tuple(
    MetricFacts(*row)
    for row in (
        ("balanced_accuracy", "balanced accuracy (%)", "higher", "mean recall over the classes"),
        ("top3_accuracy", "top-3 accuracy (%)", "higher", "true class among the 3 best scores"),
        ("macro_f1", "macro F1 (%)", "higher", "F1 score averaged over the classes"),
        ("precision", "macro precision (%)", "higher", "class-balanced precision"),
        ("recall", "macro recall (%)", "higher", "class-balanced recall"),
        ("roc_auc", "ROC AUC, one vs rest (%)", "higher", "ranking quality of class scores"),
        (
            "abstained",
            "abstained (all classes tied, %)",
            "lower",
            "images on which every class scores the same",
        ),
        ("global_size", "global size", None, "prototypes with a last-layer weight above 1e-3"),
        ("sparsity", "sparsity (%)", None, "last-layer weights of magnitude at most 1e-3"),
        ("npr", "NPR", None, "negative over positive last-layer weights (count ratio)"),
        ("vlc", "VLC", None, "1 - IoU between the S of an image's top prototypes"),
        ("intra_pd", "intra PD", None, "1 - cosine between an image's top prototypes"),
        ("inter_pd", "inter PD", None, "1 - cosine between classes' top prototypes"),
        (
            "intra_fd",
            "intra FD",
            None,
            "1 - cosine between the features an image's top prototypes matched",
        ),
        ("inter_fd", "inter FD", None, "1 - cosine between classes' matched features"),
        ("object_overlap", "object overlap (%)", "higher", "share of G covered by S"),
        ("background_overlap", "background overlap (%)", "lower", "share of S outside G"),
        ("ior", "IOR", "higher", "normalised saliency inside G minus outside, in [-1, 1]"),
        (
            "pointing_game",
            "pointing game (energy in G, %)",
            "higher",
            "share of positive saliency inside G",
        ),
        (
            "consistency",
            "consistency (%)",
            "higher",
            "how often a prototype's S holds the same object part",
        ),
        (
            "stability",
            "stability (%)",
            "higher",
            "same parts in S on a perturbed copy of the image",
        ),
        ("psc", "PSC (%)", "lower", "change of top prototypes' similarity under perturbation"),
        ("prc", "PRC (ranks)", "lower", "change of top prototypes' rank under perturbation"),
        ("crc", "CRC (rank)", "lower", "new rank of the top-1 class under perturbation"),
        ("cac", "CAC (%)", "lower", "change of the class probabilities under perturbation"),
        (
            "local_size",
            "local size (prototypes)",
            None,
            "prototypes per image above 0.1 x its best similarity",
        ),
        (
            "entropy",
            "activation entropy",
            None,
            "spread of a prototype's similarity over the test images",
        ),
        (
            "plc",
            "PLC (cells between top prototypes' maxima)",
            None,
            "distance between the activation maxima",
        ),
        ("palc", "PALC (%)", None, "VLC of the top prototypes' activation masks"),
        ("plc_perturbed", "PLC under perturbation (cells)", "lower", "shift of the maximum"),
        ("palc_perturbed", "PALC under perturbation (%)", "lower", "change of activation mask"),
        ("pac_perturbed", "PAC under perturbation (%)", "lower", "change of activation values"),
        (
            "vlc_completeness",
            "VLC, noise outside S's box (%)",
            "lower",
            "1 - IoU of S before and after noise outside the box of S",
        ),
        (
            "vlc_sbox_completeness",
            "VLC of S's box, noise outside it (%)",
            "lower",
            "1 - IoU of the boxes of S before and after",
        ),
        ("vac_completeness", "VAC, noise outside S's box (%)", "lower", "change of R's values"),
        (
            "plc_completeness",
            "PLC, noise outside S's box (cells)",
            "lower",
            "shift of the prototype's activation maximum",
        ),
        ("psc_completeness", "PSC, noise outside S's box (%)", "lower", "change of its score"),
        ("prc_completeness", "PRC, noise outside S's box (ranks)", "lower", "change of its rank"),
        (
            "palc_completeness",
            "PALC, noise outside S's box (%)",
            "lower",
            "change of its activation mask",
        ),
        (
            "pac_completeness",
            "PAC, noise outside S's box (%)",
            "lower",
            "change of its activation values",
        ),
        ("iou", "IoU of S with G (%)", "higher", "intersection over union of S and G"),
        ("oirr", "OIRR", "lower", "mean saliency on S outside G over inside G"),
        (
            "object_overlap_box",
            "object overlap, object box (%)",
            "higher",
            "share of the box covered by S",
        ),
        (
            "background_overlap_box",
            "background overlap, object box (%)",
            "lower",
            "share of S outside the box",
        ),
        ("iou_box", "IoU of S with the object box (%)", "higher", "IoU of S and the box"),
        ("vac", "VAC (%)", None, "how differently the top prototypes' saliency is spread"),
        ("vlc_perturbed", "VLC under perturbation (%)", "lower", "1 - IoU of S and S'"),
        ("vac_perturbed", "VAC under perturbation (%)", "lower", "change of saliency values"),
        ("vlc_sbox", "VLC of S's bounding boxes (%)", None, "VLC with S as its box"),
        (
            "consistency_sbox",
            "consistency, S's bounding box (%)",
            "higher",
            "consistency with S as its box",
        ),
        (
            "stability_sbox",
            "stability, S's bounding box (%)",
            "higher",
            "stability with S as its box",
        ),
        (
            "mask_consistency",
            "mask consistency (segmenter, %)",
            None,
            "per class, how consistently masks hold the same parts",
        ),
        (
            "randomisation.spearman",
            "randomisation: Spearman trained vs random",
            "lower",
            "saliency should change when the trunk is re-initialised",
        ),
        (
            "randomisation.passed",
            "randomisation check passed",
            None,
            "Spearman correlation below 0.5",
        ),
        (
            "fallback_share",
            "test images with only whole-image views (%)",
            None,
            "images the segmenter gave no usable mask",
        ),
        (
            "randomisation.spearman_abs",
            "randomisation: Spearman of |saliency|",
            "lower",
            "as the Spearman check, on absolute values",
            False,
        ),
        (
            "randomisation.top_mask_iou",
            "randomisation: IoU of the S masks (%)",
            "lower",
            "overlap of S, trained vs randomised trunk",
            False,
        ),
        (
            "randomisation.pairs",
            "randomisation: pairs",
            None,
            "(image, prototype) pairs compared",
            False,
        ),
        ("pointing_hit", "pointing game hit (%)", "higher", "saliency maximum inside G", False),
        ("empty_saliency", "empty saliency (%)", "lower", "maps without positive value", False),
    )
)
FACTS: dict[str, MetricFacts] = {f.key: f for f in METRICS}


def facts_of(dotted: str) -> Optional[MetricFacts]:
    """The facts of a metric by its dotted key in a metrics JSON (``explanation.vlc``,
    ``native.explanation.vlc``, ``randomisation.spearman``): the longest known tail."""
    parts = dotted.split(".")
    for start in range(len(parts)):
        found = FACTS.get(".".join(parts[start:]))
        if found is not None:
            return found
    return None
