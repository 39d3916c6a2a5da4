"""The layout of metrics/evaluate/<model>/seed-<seed>.json (README: Metrics), defined once:
the headline metrics at the top level, every other key in one group, so ``dvc metrics
show`` and the JSON start with what a reader compares first.

Evaluate writes by :func:`grouped`; compare, the report and the stage's summary line read
by :func:`path_of` (a metric's dotted key) and :func:`lookup` (or :func:`value_of`, both). A baseline's native maps
(ProtoPNet's and ProtoPool's upsampled similarity, PIP-Net's upsampled presence) are a
second saliency method, under ``native`` with the same layout (``native.object_overlap``,
``native.explanation.vlc``, ``native.randomisation.spearman``). The model-randomisation
check is the group ``randomisation`` of its method (its keys are the check's own).
"""

from __future__ import annotations

from typing import Any

# The headline: class-balanced accuracy and the paper's claim metrics.
HEADLINE = ("balanced_accuracy", "object_overlap", "background_overlap", "consistency")

# group -> its keys, in the order of the file (after the headline).
GROUPS: dict[str, tuple[str, ...]] = {
    "classification": (
        "top3_accuracy",
        "macro_f1",
        "precision",
        "recall",
        "roc_auc",
        "abstained",
    ),
    "prototypes": (
        "global_size",
        "sparsity",
        "npr",
        "intra_pd",
        "inter_pd",
        "intra_fd",
        "inter_fd",
        "local_size",
        "entropy",
    ),
    "explanation": (
        "vlc",
        "ior",
        "pointing_game",
        "pointing_hit",
        "empty_saliency",
        "iou",
        "oirr",
        "object_overlap_box",
        "background_overlap_box",
        "iou_box",
        "vac",
        "vlc_sbox",
        "consistency_sbox",
        "plc",
        "palc",
    ),
    "perturbation": (
        "stability",
        "stability_sbox",
        "psc",
        "prc",
        "crc",
        "cac",
        "vlc_perturbed",
        "vac_perturbed",
        "plc_perturbed",
        "palc_perturbed",
        "pac_perturbed",
    ),
    "completeness": (  # output completeness: noise outside the box of S
        "vlc_completeness",
        "vlc_sbox_completeness",
        "vac_completeness",
        "plc_completeness",
        "psc_completeness",
        "prc_completeness",
        "palc_completeness",
        "pac_completeness",
    ),
    "segmenter": ("mask_consistency", "fallback_share"),
    "randomisation": (),  # the check's dict, as it is
    "run": (
        "model",
        "seed",
        "checkpoint",
        "saliency",
        "lrp_composite",
        "test_images",
        "test_classes",
        "top_k",
    ),
}
NATIVE = "native"  # the group of a baseline's native maps (same layout)
_GROUP_OF = {key: group for group, keys in GROUPS.items() for key in keys}


def path_of(key: str) -> str:
    """The dotted place of a metric: ``vlc`` -> ``explanation.vlc``; a headline key, a
    group name or a key already dotted (``native.vlc`` -> ``native.explanation.vlc``,
    ``randomisation.spearman``) as it lies."""
    head, _, rest = key.partition(".")
    if head == NATIVE and rest:
        return f"{NATIVE}.{path_of(rest)}"
    if head in HEADLINE or head in GROUPS or head not in _GROUP_OF:
        return key
    return f"{_GROUP_OF[head]}.{key}"


def grouped(flat: dict[str, Any]) -> dict[str, Any]:
    """The headline keys of ``flat``, then each group that has keys (in table order, a
    key's value as given); ``randomisation`` and ``native`` are taken as they are (native
    grouped the same way). A key of no group is an error: add it to :data:`GROUPS`."""
    unknown = set(flat) - set(HEADLINE) - set(_GROUP_OF) - {"randomisation", NATIVE}
    if unknown:
        raise KeyError(f"metrics of no group (model/metric_layout.py): {sorted(unknown)}")
    out: dict[str, Any] = {k: flat[k] for k in HEADLINE if k in flat}
    for group, keys in GROUPS.items():
        if group == "randomisation":
            if group in flat:
                out[group] = flat[group]
        elif any(k in flat for k in keys):
            out[group] = {k: flat[k] for k in keys if k in flat}
    if NATIVE in flat:
        out[NATIVE] = grouped(flat[NATIVE])
    return out


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": v} as {"a": {"b": v}} (keys in the order given)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def lookup(doc: dict, dotted: str) -> Any:
    """doc["a"]["b"] for "a.b"; None when a key is missing."""
    node: Any = doc
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def value_of(doc: dict, key: str) -> Any:
    """A metric of a metrics document by its name (``test_images``, ``vlc``): the value at
    :func:`path_of`; None when missing."""
    return lookup(doc, path_of(key))


def chance_accuracy(test_classes: int) -> float:
    """The balanced accuracy (%) of a guess that ignores the image (always one class, or
    uniformly at random) on a test split of ``test_classes`` classes (``run.test_classes``):
    what an accuracy must lie above to show that a model learned."""
    return 100.0 / test_classes


# The headline file of a run (metrics/headline/<model>/seed-<seed>.json, the DVC metric
# of evaluate, so that ``dvc metrics show`` stays short): the headline, then these.
HEADLINE_EXTRAS = ("abstained", "test_images")


def headline_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The headline keys and the :data:`HEADLINE_EXTRAS` present in a grouped metrics
    document, flat; an absent metric (``{"absent": reason}``, the reason stays in the whole
    document) or a missing one is None."""

    def scalar(key: str) -> Any:
        value = value_of(doc, key)
        return None if isinstance(value, dict) else value

    out = {key: scalar(key) for key in HEADLINE}
    out.update({key: scalar(key) for key in HEADLINE_EXTRAS if scalar(key) is not None})
    return out
