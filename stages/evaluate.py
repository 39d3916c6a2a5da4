"""``protomask evaluate`` (one model's explainability metrics and report, per seed) and
``protomask compare`` (the models side by side over the seeds)."""

from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import chosen_seeds, model_option, seed_option, stage_command


@stage_command(
    "evaluate",
    help=(
        "Evaluate one trained model on the test split: accuracy, compactness and every "
        "explainability metric (README: Metrics) from PRP (or gradient) saliency of each image's "
        "top-k prototypes, against the ground-truth segmentation and part keypoints; a perturbed "
        "copy of each image for stability/PSC/PRC/CRC; a model-randomisation sanity check. Writes "
        "metrics/evaluate/<model>/seed-<seed>.json and the report "
        "artifacts/evaluate/<model>/seed-<seed>/index.html (+ PNGs), as params evaluate says; "
        "once per seed of train.seeds (or the one --seed names)."
    ),
)
@model_option("Which trained network.")
@seed_option()
def evaluate(params: Params, kind: str, seed: int | None) -> None:
    """Evaluate one trained model per seed and print a summary line each."""
    from model.evaluation import run_evaluation
    from model.formatting import SHORT, format_metric
    from model.metric_layout import HEADLINE, value_of

    for one in chosen_seeds(params, seed):
        result = run_evaluation(params, kind, seed=one)
        m = {key: format_metric(value_of(result.metrics, key), SHORT) for key in HEADLINE}
        click.echo(
            f"evaluate {kind} seed {one}: {value_of(result.metrics, 'test_images')} test "
            f"images, balanced accuracy {m['balanced_accuracy']}%, object overlap "
            f"{m['object_overlap']}, background overlap {m['background_overlap']}, consistency "
            f"{m['consistency']} in {result.timings['total_with_report']:.0f} s; "
            f"report {layout.evaluate_dir(kind, one) / 'index.html'}"
        )


@stage_command(
    "compare",
    help=(
        "Write artifacts/evaluate/comparison.md and metrics/compare.json from "
        "metrics/evaluate/<model>/seed-<seed>.json of every model and seed of train.seeds: "
        "each metric as mean +- std over the seeds, ProtoMask minus each baseline paired by "
        "seed with a 95 % interval, and the paper's claims (background overlap lower, object "
        "overlap and consistency higher, accuracy competitive) as holds / does not hold / "
        "undecided; undecided, with the reason, when test images or training seeds are too "
        "few or most views are whole-image fallbacks (params evaluate.verdict_*)."
    ),
)
def compare(params: Params) -> None:
    """Write the comparison and print the verdict (or why there is none)."""
    from model.comparison import run_compare

    result = run_compare(params)
    click.echo(f"compare: {layout.COMPARISON}: {result.sentence}")
