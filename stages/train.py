"""``protomask train``: fit ProtoMask (views) or the ProtoPNet baseline (full images)."""

from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import model_option, stage_command


@stage_command(
    "train",
    help=(
        "Train one model from the crops: warm-up (trunk frozen), joint, push, last layer, as "
        "params train says. Checkpoints go to artifacts/train/<model>/{latest,best,final}; a "
        "rerun continues an interrupted run (same params), dvclive logs go to "
        "artifacts/train/<model>/dvclive. Under torchrun it trains with DistributedDataParallel."
    ),
)
@model_option("Which network to train.")
@click.option(
    "--resume/--restart",
    default=True,
    show_default=True,
    help="Continue from latest/ when its params match, or start over.",
)
def train(params: Params, kind: str, resume: bool) -> None:
    """Train one model (under torchrun: this rank's part) and print its summary line."""
    from model import distributed
    from model.training import run_training

    distributed.init_from_env()
    main_process = distributed.is_main()
    try:
        m = run_training(params, kind, resume=resume)
    finally:
        distributed.shutdown()
    if main_process:
        speed = m.get("train_images_per_second")
        click.echo(
            f"train {kind}: best validation accuracy {m['best_val_accuracy']:.1f}% "
            f"(step {m['best_step']} of {m['steps']})"
            + (f", {speed:.1f} training images/s" if speed else "")
            + f"; checkpoints in {layout.TRAIN_DIR / kind}"
        )
