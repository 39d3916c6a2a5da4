"""The evaluate stage's work: the whole metric suite (README: Metrics) on the test split,
for one model. :func:`run_evaluation` is the list of steps:

1. :func:`open_run`: the trained network (:mod:`model.loading`), the test images with their
   ground truth and view boxes (:mod:`pipeline.evaluation_set`) and their model inputs,
   clean and perturbed (:mod:`pipeline.model_inputs`, :mod:`pipeline.perturbation`);
2. one pass over the test images in batches (:mod:`model.explain_pass`): inputs prepared
   in ``evaluate.loader_workers`` DataLoader workers (:mod:`pipeline.evaluation_loader`),
   forward, top-k prototypes, their saliency on the clean and the perturbed input put on
   the image canvas, per-item metrics against the ground truth (:mod:`model.map_stats`);
   only these small arrays are kept, never the maps. Under ``torchrun`` each rank runs
   its share of the batches and rank 0 gathers them in batch order, then alone does steps
   3-5 and writes the outputs (the same bytes as one process);
3. the scalars (:mod:`model.scalars`): class-balanced accuracy, top-3, macro F1, global
   size, sparsity, NPR, intra/inter PD, PSC, PRC, CRC and the segmenter's mask consistency
   (from the mask shards: the masks the test images' views were cut from), then each
   method's VLC, object/background overlap, IOR, consistency, stability, pointing game;
4. the model-randomisation sanity check (:mod:`model.randomisation`: saliency of the
   trained model vs the same model with a re-initialised trunk, on the first
   ``evaluate.sanity_images`` test images' top-1 prototype; Spearman correlation of the
   input-level maps, verdict ``passed`` when its mean is below 0.5);
5. the report (:mod:`model.report`) and the outputs; the wall-clock seconds of each step go
   to the run log only.

Keys of metrics/evaluate/<model>/seed-<seed>.json (means over test images; x100 for
percentages), laid out by :mod:`model.metric_layout`: the headline ``balanced_accuracy``,
``object_overlap``, ``background_overlap``, ``consistency`` at the top level, then the
groups ``classification`` (top-3, macro F1, precision, recall, ROC AUC, abstained),
``prototypes`` (global size, sparsity, NPR, intra/inter PD, local size, entropy),
``explanation`` (VLC, IOR, pointing game, pointing hit, empty saliency, IoU, OIRR, the
``_box`` and ``_sbox`` forms, VAC, PLC, PALC), ``perturbation`` (stability, PSC, PRC,
CRC, CAC and the ``_perturbed`` changes), ``segmenter`` (mask consistency, fallback
share), ``randomisation`` {``spearman`` (trained vs randomised trunk, mean over pairs),
``spearman_abs``, ``top_mask_iou``, ``pairs``, ``passed`` (spearman < 0.5)} and ``run``
(model, seed, checkpoint, saliency, lrp_composite, test_images, test_classes,
top_k). A model's native maps (ProtoPNet's and ProtoPool's upsampled similarity, PIP-Net's upsampled presence)
repeat the saliency metrics, in the same layout, under ``native``.

Ground truth: a metric whose ground truth the dataset lacks entirely is
``{"absent": reason}``; an image without it is left out of that metric's mean. Stability
leaves out pairs where neither S nor S' holds a part (the reference's convention).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from model.explain_pass import EvalRun, PassResults, explain_test_set
from model.loading import load_model
from model.map_stats import ACTIVATION_KEYS, COMPLETENESS_KEYS, SALIENCY_KEYS
from model.metric_layout import NATIVE, grouped, headline_document
from model.metrics import to_jsonable
from model.model_kinds import explained_model, make_explainer
from model.randomisation import randomisation_check
from model.report import ReportBuilder
from model.scalars import Scores, model_metrics, segmenter_consistency
from model.timing import Timer
from model.training import MODELS, check_seed, resolve_device
from pipeline import layout
from pipeline.atomic import atomic_file
from pipeline.errors import ArtifactError
from pipeline.evaluation_set import fallback_share, load_test_set
from pipeline.model_inputs import ModelInputs
from pipeline.params import Params
from pipeline.progress import Steps, get_logger
from pipeline.run_log import write_run_log
from pipeline.tables import read_info

__all__ = [
    "METRIC_KEYS",
    "MODEL_KEYS",
    "SALIENCY_KEYS",
    "Evaluation",
    "load_model",
    "run_evaluation",
    "write_outputs",
]

MODEL_KEYS = (
    "balanced_accuracy",
    "top3_accuracy",
    "macro_f1",
    "precision",
    "recall",
    "roc_auc",
    "abstained",
    "global_size",
    "sparsity",
    "npr",
    "intra_pd",
    "inter_pd",
    "psc",
    "prc",
    "crc",
    "cac",
    "local_size",
    "entropy",
    *ACTIVATION_KEYS,
    *COMPLETENESS_KEYS,
    "mask_consistency",
)
METRIC_KEYS = MODEL_KEYS + SALIENCY_KEYS + ("randomisation",)
log = get_logger("evaluate")


@dataclass
class Evaluation:
    """What the report needs besides the metrics."""

    kind: str
    seed: int
    metrics: dict[str, Any]
    timings: dict[str, float]
    report: ReportBuilder


def run_evaluation(
    params: Params,
    kind: str,
    project_root: Path = Path("."),
    write: bool = True,
    seed: Optional[int] = None,
) -> Optional[Evaluation]:
    """Evaluate one trained model (a model and a training seed) on the test split; under
    ``torchrun`` (a joined process group) every rank takes part in the pass.

    Args:
        params: the project params (section evaluate; data.root; train.seeds).
        kind: protomask or protopnet.
        project_root: the project folder.
        write: write metrics/evaluate/<kind>/seed-<seed>.json, the report folder
            artifacts/evaluate/<kind>/seed-<seed>/ and the run log.
        seed: the training seed, one of train.seeds (None: the first of them).

    Returns:
        The metrics document, the timings and the report; None on ranks other than 0.
    """
    if kind not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {kind!r}")
    seed = params.train.seeds[0] if seed is None else seed
    check_seed(params, seed)
    timer, steps = Timer(), Steps(f"evaluate {kind} seed {seed}", 5, log)
    with timer.section("load"):
        run = open_run(params, kind, seed, project_root)
    steps.done("inputs", f"{len(run.test.image_ids)} test images, {kind} model on {run.device}")
    with run.inputs.masks:  # the mask shards, opened once each
        results = explain_test_set(run, timer)
        if results is None:  # another rank's share, gathered on rank 0
            return None
        run.report.samples = results.samples
        scores = results.scores()
        steps.done("saliency", f"{', '.join(run.methods)} maps of the top {run.k} prototypes")
        with timer.section("scalars"):
            metrics, others = scalar_metrics(run, results, scores)
        steps.done("metrics", f"{len(metrics)} scalars, {len(others)} other saliency methods")
        with timer.section("randomisation"):
            sanity = randomisation_check(run.model, kind, results.sanity, run.ev, run.device)
        steps.done("sanity check", f"randomised trunk, {len(results.sanity)} images")
        with timer.section("report_saliency"):
            run.report.add_prototypes(
                run.explainer,
                run.model.head,
                run.inputs,
                scores.sim,
                scores.matched,
                run.device,
                project_root,
            )
            run.report.add_evidence(run.model, run.inputs, run.device)
    doc = metrics_document(run, metrics, others, sanity)
    timer.mark("total")
    result = Evaluation(kind, seed, doc, timer.rounded(), run.report)
    if write:
        write_outputs(result, project_root)
    steps.done("report", str(layout.evaluate_dir(kind, seed) / "index.html") if write else "")
    if write:
        timer.mark("total_with_report")
        result.timings = timer.rounded()
        write_run_log(project_root, f"evaluate-{kind}-seed-{seed}", result.timings)
    return result


def open_run(params: Params, kind: str, seed: int, project_root: Path) -> EvalRun:
    """The trained model, its test inputs (the first ``evaluate.max_images``) and the
    report builder."""
    ev = params.evaluate
    device = resolve_device(ev.device, "evaluate.device")
    images_info = read_info(project_root / layout.IMAGES_INDEX, "images")
    num_classes = len(images_info["facts"]["class_names"])
    model, train = load_model(project_root, kind, ev.checkpoint, num_classes, device, seed)
    model = explained_model(model, kind)
    explainer = make_explainer(kind, model.trunk, model.add_on)
    inputs = ModelInputs(kind, project_root, params, train)
    count = len(inputs.dataset)
    n = count if ev.max_images is None else min(ev.max_images, count)
    if n == 0:
        raise ArtifactError(f"{project_root / layout.CROPS_INDEX}: the test split is empty")
    test = load_test_set(project_root, inputs.dataset.image_ids[:n])
    return EvalRun(
        kind,
        ev,
        device,
        model,
        explainer,
        inputs,
        test,
        num_classes,
        min(ev.top_k, model.head.num_prototypes),
        ReportBuilder(kind, seed, test, ev, inputs.size),
    )


def scalar_metrics(
    run: EvalRun, results: PassResults, scores: Scores
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The scalars of the whole test split.

    Args:
        run: the evaluation.
        results: the pass's per-item metrics.
        scores: the pass's outputs, concatenated.

    Returns:
        The model's scalars, the segmenter's mask consistency and the scalars of
        evaluate.saliency (in the order of the metrics JSON); and the scalars of every
        other method (ProtoPNet's ``upsampled``).
    """
    metrics = model_metrics(scores, run.test.labels, run.model.head, run.num_classes)
    metrics["mask_consistency"] = segmenter_consistency(run.test, run.inputs.masks)
    metrics.update(results.completeness.results())
    per_method = {
        m: s.results(run.model.head.num_prototypes, run.test.parts_known)
        for m, s in results.stats.items()
    }
    metrics.update(per_method.pop(run.ev.saliency))
    return metrics, per_method


def metrics_document(
    run: EvalRun,
    metrics: dict[str, Any],
    others: dict[str, dict[str, Any]],
    sanity: dict[str, dict],
) -> dict[str, Any]:
    """metrics/evaluate/<kind>/seed-<seed>.json (JSON values) in the layout of
    :mod:`model.metric_layout`: every metric, the run's settings, each method's
    randomisation check; the native maps (``upsampled``) under ``native``."""
    ev = run.ev
    flat = dict(metrics, randomisation=sanity[ev.saliency])
    for method, values in others.items():
        flat[NATIVE if method == "upsampled" else method] = dict(
            values, randomisation=sanity[method]
        )
    flat.update(
        model=run.kind,
        seed=run.report.seed,
        checkpoint=ev.checkpoint,
        saliency=ev.saliency,
        lrp_composite=ev.lrp_composite if ev.saliency == "prp" else None,
        test_images=int(len(run.test.image_ids)),
        test_classes=int(len(np.unique(run.test.labels))),
        fallback_share=fallback_share(run.test),
        top_k=int(run.k),
    )
    return _json_values(grouped(flat))


def _json_values(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (
            _json_values(v)
            if isinstance(v, dict)
            else v
            if isinstance(v, (bool, int, str)) or v is None
            else to_jsonable(v)
        )
        for k, v in values.items()
    }


def write_outputs(result: Evaluation, project_root: Path) -> None:
    """metrics/evaluate/<kind>/seed-<seed>.json (every metric), its headline
    metrics/headline/<kind>/seed-<seed>.json, and the report folder (index.html, PNGs,
    metrics.json)."""
    out_dir = project_root / layout.evaluate_dir(result.kind, result.seed)
    result.report.write(out_dir, result.metrics)
    metrics_path = project_root / layout.evaluate_metrics(result.kind, result.seed)
    for path in (out_dir / "metrics.json", metrics_path):
        with atomic_file(path) as tmp:
            tmp.write_text(
                json.dumps(result.metrics, indent=2, sort_keys=False, allow_nan=False) + "\n"
            )
    headline = headline_document(result.metrics)
    with atomic_file(project_root / layout.headline_metrics(result.kind, result.seed)) as tmp:
        tmp.write_text(json.dumps(headline, indent=2, allow_nan=False) + "\n")
