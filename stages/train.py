"""``protomask train``: fit ProtoMask (views) or the ProtoPNet baseline (full images)."""

from __future__ import annotations

import click

from pipeline import layout
from pipeline.params import Params
from stages.common import chosen_seeds, model_option, seed_option, stage_command


@stage_command(
    "train",
    help=(
        "Train one model from the crops: warm-up (trunk frozen), joint, push, last layer, as "
        "params train says, once per seed of train.seeds (or the one --seed names). Checkpoints "
        "go to artifacts/train/<model>/seed-<seed>/{latest,best,final}; a rerun continues an "
        "interrupted run (same params), dvclive logs go to "
        "artifacts/train/<model>/seed-<seed>/dvclive. Under torchrun it trains with "
        "DistributedDataParallel."
    ),
)
@model_option("Which network to train.")
@seed_option()
@click.option(
    "--resume/--restart",
    default=True,
    show_default=True,
    help="Continue from latest/ when its params match, or start over.",
)
def train(params: Params, kind: str, seed: int | None, resume: bool) -> None:
    """Train one model per seed (under torchrun: this rank's part); a summary line each."""
    from model import distributed
    from model.training import run_training

    distributed.init_from_env()
    main_process = distributed.is_main()
    try:
        for one in chosen_seeds(params, seed):
            m = run_training(params, kind, resume=resume, seed=one)
            if main_process:
                speed = m.get("train_images_per_second")
                click.echo(
                    f"train {kind} seed {one}: best validation accuracy "
                    f"{m['best_val_accuracy']:.1f}% (step {m['best_step']} of {m['steps']})"
                    + (f", {speed:.1f} training images/s" if speed else "")
                    + f"; checkpoints in {layout.train_dir(kind, one)}"
                )
    finally:
        distributed.shutdown()
