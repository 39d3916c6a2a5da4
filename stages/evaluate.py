"""``protomask evaluate`` (one model's explainability metrics and report) and
``protomask compare`` (the two models side by side)."""

from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import model_option, stage_command


@stage_command(
    "evaluate",
    help=(
        "Evaluate one trained model on the test split: accuracy, compactness and every "
        "explainability metric (README: Metrics) from PRP (or gradient) saliency of each image's "
        "top-k prototypes, against the ground-truth segmentation and part keypoints; a perturbed "
        "copy of each image for stability/PSC/PRC/CRC; a model-randomisation sanity check. Writes "
        "metrics/evaluate/<model>.json and the report artifacts/evaluate/<model>/index.html "
        "(+ PNGs), as params evaluate says."
    ),
)
@model_option("Which trained network.")
def evaluate(params: Params, kind: str) -> None:
    """Evaluate one trained model and print its summary line."""
    from model.evaluation import run_evaluation
    from model.formatting import SHORT, format_metric

    result = run_evaluation(params, kind)
    m = {
        key: format_metric(result.metrics[key], SHORT)
        for key in ("accuracy", "object_overlap", "background_overlap", "consistency")
    }
    click.echo(
        f"evaluate {kind}: {result.metrics['test_images']} test images, balanced "
        f"accuracy {m['accuracy']}%, object overlap {m['object_overlap']}, "
        f"background overlap {m['background_overlap']}, consistency "
        f"{m['consistency']} in {result.timings['total_with_report']:.0f} s; "
        f"report {layout.evaluate_dir(kind) / 'index.html'}"
    )


@stage_command(
    "compare",
    help=(
        "Write artifacts/evaluate/comparison.md: the metrics of ProtoMask and the ProtoPNet "
        "baseline side by side, and whether ProtoMask's background overlap is lower and its "
        "object overlap and consistency higher (computed from metrics/evaluate/*.json); no "
        "verdict, with the reason, when test images or training seeds are too few or most views "
        "are whole-image fallbacks (params evaluate.verdict_*)."
    ),
)
def compare(params: Params) -> None:
    """Write the comparison and print the verdict (or why there is none)."""
    from model.comparison import run_compare

    result = run_compare(params.evaluate)
    click.echo(f"compare: {layout.COMPARISON}: {result.sentence}")
