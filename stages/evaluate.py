"""``protomask evaluate`` (one model's explainability metrics and report, per seed) and
``protomask compare`` (the models side by side over the seeds)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import chosen_seeds, model_option, seed_option, stage_command

if TYPE_CHECKING:
    from model.evaluation import Evaluation


@stage_command(
    "evaluate",
    help=(
        "Evaluate one trained model on the test split: accuracy, compactness and every "
        "explainability metric (README: Metrics) from PRP (or gradient) saliency of each image's "
        "top-k prototypes, against the ground-truth segmentation and part keypoints; a perturbed "
        "copy of each image for stability/PSC/PRC/CRC; a model-randomisation sanity check. Writes "
        "metrics/evaluate/<model>/seed-<seed>.json and the report "
        "artifacts/evaluate/<model>/seed-<seed>/index.html (+ PNGs), as params evaluate says; "
        "once per seed of train.seeds (or the one --seed names). Under torchrun the ranks share "
        "the test images and rank 0 writes the same files as one process."
    ),
)
@model_option("Which trained network.")
@seed_option()
def evaluate(params: Params, kind: str, seed: int | None) -> None:
    """Evaluate one trained model per seed and print a summary line each (rank 0)."""
    from model import distributed
    from model.evaluation import run_evaluation

    distributed.init_from_env()
    try:
        for one in chosen_seeds(params, seed):
            result = run_evaluation(params, kind, seed=one)
            if result is not None:
                click.echo(summary_line(result))
    finally:
        distributed.shutdown()


def summary_line(result: Evaluation) -> str:
    """One evaluation in a line: test images, the headline metrics (accuracy with its
    chance level), time, the report."""
    from model.formatting import SHORT, format_metric
    from model.metric_layout import HEADLINE, chance_accuracy, value_of

    kind, seed = result.kind, result.seed
    m = {key: format_metric(value_of(result.metrics, key), SHORT) for key in HEADLINE}
    classes = value_of(result.metrics, "test_classes")
    chance = f" (chance {chance_accuracy(classes):.1f}%)" if classes else ""
    return (
        f"evaluate {kind} seed {seed}: {value_of(result.metrics, 'test_images')} test "
        f"images, balanced accuracy {m['balanced_accuracy']}%{chance}, object overlap "
        f"{m['object_overlap']}, background overlap {m['background_overlap']}, consistency "
        f"{m['consistency']} in {result.timings['total_with_report']:.0f} s; "
        f"report {layout.evaluate_dir(kind, seed) / 'index.html'}"
    )


@stage_command(
    "compare",
    help=(
        "Write artifacts/evaluate/comparison.md and .json and the verdict "
        "metrics/compare.json from "
        "metrics/evaluate/<model>/seed-<seed>.json of every model and seed of train.seeds: "
        "each metric as mean +- std over the seeds, ProtoMask minus each baseline paired by "
        "seed with a 95 % interval, and the paper's claims (background overlap lower, object "
        "overlap and consistency higher, accuracy competitive) as holds / does not hold / "
        "undecided; no verdict, with the reason, when test images or training seeds are too "
        "few, a model abstains on most images or does not beat chance, or most views are "
        "whole-image fallbacks (params evaluate.verdict_*)."
    ),
)
def compare(params: Params) -> None:
    """Write the comparison and print the verdict (or why there is none)."""
    from model.comparison import run_compare

    result = run_compare(params)
    click.echo(f"compare: {layout.COMPARISON}: {result.sentence}")
