"""The train stage's work for every model: its recipe's schedule of steps, checkpoints, logs.

A run is a fixed list of steps (model/recipes.py: ProtoMask and ProtoPNet warm-up, joint,
push, last layer; ProtoPool the same with its slot assignment; PIP-Net pretraining, then
training). After every step the whole state (weights, optimisers, schedulers, RNG states,
step index) is saved atomically to ``latest/``; a rerun with the same fingerprint
continues after the last finished step, so an interrupted run ends with the same weights
as an uninterrupted one (on CPU). Each epoch's shuffling and augmentation depend only on
(seed, step), never on what ran before.

Model selection reads only the validation split and chooses only among valid states
(prototypes pushed onto training embeddings; for PIP-Net, a trained classifier): the best
of these is kept in ``best/``; ``final/`` holds the last step. The test split is never
read here. Every checkpoint is CRC-checked before use; a damaged ``best/`` or ``final/``
is rebuilt from ``latest/`` or by training again, never loaded.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from model import distributed as dist_utils
from model.backbones import build_backbone
from model.checkpoint import load_checkpoint, restore, save_checkpoint
from model.curves import write_curves
from model.head import unwrap_model
from model.losses import class_weights
from model.push import push_prototypes
from model.recipes import Recipe, Step, recipe
from model.run_state import (
    PUSH_RECORDS,
    Logger,
    RunState,
    checkpoint_path,
    copy_checkpoint,
    finished_summary,
    resume_point,
)
from pipeline import devices, layout
from pipeline.atomic import remove_leftovers, write_json
from pipeline.errors import ArtifactError, ParamsError
from pipeline.params import (
    Params,
    TrainParams,
    result_dict,
    text_fingerprint,
)
from pipeline.pipnet_views import TwoViewDataset
from pipeline.progress import Progress, StepClock, format_duration, get_logger, track
from pipeline.run_log import write_run_log
from pipeline.tables import read_info
from pipeline.view_datasets import FullImageDataset, ViewDataset

MODELS = layout.MODELS
log = get_logger("train")


def schedule(train: TrainParams, kind: str) -> list[Step]:
    """Every step of a run of model ``kind``, in order (its recipe's schedule)."""
    return recipe(kind).schedule(model_section(train, kind))


def model_section(train: TrainParams, kind: str) -> Any:
    """train.<kind>: the model's own network, schedule, loss and optimiser settings."""
    return getattr(train, kind)


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """auto -> this rank's GPU when there is one, else the CPU (see pipeline.devices)."""
    return torch.device(devices.resolve_device(name, key, dist_utils.local_rank()))


def run_seed(train: TrainParams) -> int:
    """The seed of one run: the train params of a run list exactly one seed
    (:func:`with_seed`)."""
    if len(train.seeds) != 1:
        raise ValueError(
            f"one run has one seed, got train.seeds {train.seeds}: pass the params of one "
            "run, with_seed(params, seed)"
        )
    return train.seeds[0]


def check_seed(params: Params, seed: int) -> None:
    """ParamsError unless ``seed`` is one of train.seeds (compare reads only those)."""
    if seed not in params.train.seeds:
        raise ParamsError(
            f"seed {seed} is not in train.seeds {params.train.seeds}: add it there "
            "(compare reads the seeds listed there)"
        )


def with_seed(params: Params, seed: int) -> Params:
    """The params of the run with ``seed`` (one of train.seeds): train.seeds is [seed], so
    its fingerprint and stored params do not change when other seeds are added."""
    check_seed(params, seed)
    return replace(params, train=replace(params.train, seeds=[seed]))


def build_model(kind: str, train: TrainParams, num_classes: int) -> nn.Module:
    """The network named ``kind`` from params train.model (its trunk) and train.<kind>
    (train: one run's params)."""
    m = train.model
    trunk = build_backbone(m.backbone, m.weights, freeze_bn=m.freeze_bn)
    return recipe(kind).build(trunk, num_classes, model_section(train, kind), run_seed(train))


def make_dataset(
    kind: str, params: Params, split: str, project_root: Path, augment: bool
) -> Dataset:
    """One split as the model reads it: views (ProtoMask) or full images (the others);
    for a model trained on pairs, two augmented views of each image when ``augment``."""
    crops_dir = project_root / layout.CROPS_DIR
    seed = run_seed(params.train)
    aug = params.train.augment if augment else None
    how = recipe(kind)
    if not how.full_image:
        return ViewDataset(crops_dir, split, augment=aug, seed=seed)
    images = FullImageDataset(
        crops_dir,
        split,
        size=params.train.model.baseline_image_size,
        data_root=project_root / params.data.root,
        images_index=project_root / layout.IMAGES_INDEX,
        augment=None if how.pairs else aug,
        seed=seed,
    )
    return TwoViewDataset(images, seed=seed) if how.pairs and augment else images


def loader(dataset: Dataset, train: TrainParams, *, shuffle_seed: Optional[int]) -> DataLoader:
    """A DataLoader; shuffled with a generator seeded per step (None: in order)."""
    sampler = dist_utils.sampler(dataset, shuffle_seed)
    generator = None
    if shuffle_seed is not None and sampler is None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(
        dataset,
        batch_size=train.batch_size,
        shuffle=shuffle_seed is not None and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=loader_workers(train),
        pin_memory=train.device != "cpu" and torch.cuda.is_available(),
        persistent_workers=False,
        drop_last=False,
    )


def loader_workers(train: TrainParams) -> int:
    """train.loader_workers, or (null) this process's share of the machine's cores, at
    most 8: torchrun's LOCAL_WORLD_SIZE processes share them."""
    return devices.worker_count(train.loader_workers, dist_utils.local_world_size(), cap=8)


def autocast(device: torch.device, train: TrainParams):
    """bf16 autocast on CUDA when asked; nothing on the CPU."""
    if device.type == "cuda" and train.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def run_epoch(run: Run, model: nn.Module, batches: Iterable, step: Step) -> dict[str, float]:
    """One training epoch of ``step``'s period with gradient accumulation; mean losses
    and accuracy. ``model``: the (DDP-wrapped) network of ``run``."""
    model.train()
    train, how, device = run.train, run.recipe, run.device
    optimizer = run.optimizers[step.period]
    totals: dict[str, float] = {}
    correct = seen = pending = 0
    optimizer.zero_grad(set_to_none=True)
    shown = track(
        batches,
        Progress(
            f"train {run.kind} seed {run_seed(train)} {step.period} epoch {step.epoch}",
            len(batches) if hasattr(batches, "__len__") else 0,
            "batch",
            logger=log,
            every=None,  # off a terminal, the step's line (record_step) is enough
            enabled=dist_utils.is_main(),
            leave=False,
        ),
    )
    for batch in shown:
        inputs = torch.cat(batch[:2]) if how.pairs else batch[0]
        inputs, labels = inputs.to(device, non_blocking=True), batch[-2].to(device)
        with autocast(device, train):
            out = model(inputs)
        loss, parts, logits = how.loss(model, out, labels, step, run.section, run.class_weight)
        (loss / train.accumulate).backward()
        pending += 1
        if pending == train.accumulate:
            optimizer.step()
            how.after_update(model, step)
            optimizer.zero_grad(set_to_none=True)
            pending = 0
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    if pending:
        optimizer.step()
        how.after_update(model, step)
        optimizer.zero_grad(set_to_none=True)
    stats = dist_utils.sum_dict({**totals, "correct": correct, "seen": seen})
    n = max(stats.pop("seen"), 1)
    out_stats = {f"train_{k}": v / n for k, v in stats.items() if k != "correct"}
    out_stats["train_accuracy"] = 100.0 * stats["correct"] / n
    return out_stats


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable, device: torch.device, train: TrainParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_ids, labels, logits) over a loader, gathered across ranks, sorted by id."""
    model.eval()
    ids, labels, logits = [], [], []
    for inputs, y, image_ids in batches:
        with autocast(device, train):
            out = model(inputs.to(device))
        # copies: a DataLoader worker's tensors live in shared memory, one open file each
        # while referenced, so keeping them would hold two files per batch of the split
        ids.append(image_ids.clone())
        labels.append(y.clone())
        logits.append(out.logits.float().cpu())
    ids_t = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
    y_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    l_t = torch.cat(logits) if logits else torch.zeros(0, 0)
    ids_t, y_t, l_t = dist_utils.gather_rows(ids_t, y_t, l_t)
    order = torch.argsort(ids_t)
    return ids_t[order].numpy(), y_t[order].numpy(), l_t[order].numpy()


def accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Top-1 accuracy in percent (0 for no samples)."""
    return float(100.0 * (logits.argmax(1) == labels).mean()) if len(labels) else 0.0


def training_fingerprint(
    params: Params, kind: str, crops_fp: str, precision: str, world_size: int = 1
) -> str:
    """What decides the trained weights: the train params that change results (not the
    speed-only ones: device, loader workers), the model kind, the crops,
    the arithmetic actually used (bf16 autocast or fp32) and the number of DDP ranks.
    The other models' sections of train are left out: tuning one model retrains no other."""
    own = {k: v for k, v in result_dict(params.train).items() if k not in MODELS or k == kind}
    return (
        text_fingerprint(json.dumps(own, sort_keys=True))[:8]
        + kind
        + crops_fp[:8]
        + precision
        + (f"x{world_size}" if world_size > 1 else "")
    )


def precision_of(device: torch.device, train: TrainParams) -> str:
    """bf16 when training autocasts to bf16 (CUDA and train.bf16), else fp32."""
    return "bf16" if device.type == "cuda" and train.bf16 else "fp32"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all saved in checkpoints)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Run:
    """Everything one training run works with (built once by :func:`start_run`)."""

    params: Params
    kind: str
    out_dir: Path
    device: torch.device
    fingerprint: str
    steps: list[Step]
    model: nn.Module
    optimizers: dict
    schedulers: dict
    class_weight: Optional[torch.Tensor]  # None: unweighted cross-entropy
    datasets: dict[str, Dataset]
    pushed: list[bool] = field(default_factory=list)  # valid (pushed) state after each step

    @property
    def train(self) -> TrainParams:
        return self.params.train

    @property
    def recipe(self) -> Recipe:
        return recipe(self.kind)

    @property
    def section(self) -> Any:
        """train.<kind>: this model's own settings."""
        return model_section(self.params.train, self.kind)


def start_run(
    params: Params, kind: str, project_root: Path, device: torch.device, fp: str, steps: list[Step]
) -> Run:
    """Seed, then build the datasets, the network, its optimisers and class weights."""
    train = params.train
    seed_everything(run_seed(train))
    datasets = {
        "train": make_dataset(kind, params, "train", project_root, augment=True),
        "push": make_dataset(kind, params, "train", project_root, augment=False),
        "val": make_dataset(kind, params, "val", project_root, augment=False),
    }
    num_classes = len(
        read_info(project_root / layout.IMAGES_INDEX, "images")["facts"]["class_names"]
    )
    model = build_model(kind, train, num_classes).to(device)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
        unwrap_model(model).channels_last = True
    own, how = model_section(train, kind), recipe(kind)
    optimizers, schedulers = how.optimizers(model, own)
    labels = torch.tensor(datasets["push"].labels)  # the training split, as it is
    weighting = class_weights(labels, num_classes) if own.loss.class_weighted else None
    return Run(
        params,
        kind,
        project_root / layout.train_dir(kind, run_seed(train)),
        device,
        fp,
        steps,
        model,
        optimizers,
        schedulers,
        None if weighting is None else weighting.to(device),
        datasets,
        how.valid_after(steps),
    )


def resume_or_restart(run: Run, resume: bool) -> RunState:
    """The state to continue from: ``latest/`` restored into the run, or a fresh start
    (the output folder emptied)."""
    ckpt = resume_point(run.out_dir, run.fingerprint) if resume else None
    state = RunState()
    if ckpt is not None:
        restore(ckpt, model=run.model, optimizers=run.optimizers, schedulers=run.schedulers)
        state = RunState.of(ckpt)
        if dist_utils.is_main() and state.best_step == state.next_step - 1:
            copy_checkpoint(run.out_dir, "latest", "best")  # a kill may have come before it
    elif dist_utils.is_main():
        shutil.rmtree(run.out_dir, ignore_errors=True)
    dist_utils.barrier()
    return state


def run_step(run: Run, ddp_model: nn.Module, index: int) -> tuple[dict, nn.Module]:
    """One step of the schedule (an epoch or the push), then the validation accuracy;
    returns its record and the (re)wrapped model."""
    step, train = run.steps[index], run.train
    if step.period == "push":
        result = push_prototypes(
            run.model, loader(run.datasets["push"], train, shuffle_seed=None), run.device
        )
        if dist_utils.is_main():
            write_json(run.out_dir / "latest" / PUSH_RECORDS, result.records())
        record: dict = {"step": index, "period": "push"}
    else:
        run.recipe.set_trainable(run.model, step.period)
        run.recipe.start_epoch(run.model, step, run.section)
        ddp_model = dist_utils.rewrap(ddp_model, run.model, run.device)
        run.datasets["train"].set_epoch(index)
        shuffle = run_seed(train) * 100003 + index
        batches = loader(run.datasets["train"], train, shuffle_seed=shuffle)
        stats = run_epoch(run, ddp_model, batches, step)
        if step.period in run.schedulers:
            run.schedulers[step.period].step()
        record = {"step": index, "period": step.period, "epoch": step.epoch, **stats}
    _, val_y, val_logits = predict(
        run.model, loader(run.datasets["val"], train, shuffle_seed=None), run.device, train
    )
    record["val_accuracy"] = accuracy(val_y, val_logits)
    return record, ddp_model


def record_step(
    run: Run, state: RunState, record: dict, logger: Logger, clock: StepClock | None = None
) -> None:
    """Update the state with a finished step; save ``latest/`` (and ``best/`` when it is
    the best pushed state so far), then log the step (dvclive, and its line on stderr
    with the pace that ``clock`` measures)."""
    index = record["step"]
    state.history.append(record)
    is_best = run.pushed[index] and record["val_accuracy"] > state.best_val
    if is_best:
        state.best_val, state.best_step = record["val_accuracy"], index
    state.next_step = index + 1
    if dist_utils.is_main():
        step = run.steps[index]
        save_checkpoint(
            checkpoint_path(run.out_dir, "latest"),
            model=run.model,
            optimizers=run.optimizers,
            schedulers=run.schedulers,
            params=result_dict(run.params),  # speed-only keys left out: same bytes
            fingerprint=run.fingerprint,
            period=step.period,
            epoch=step.epoch,
            pushed=run.pushed[index],
            extra=state.extra(),
        )
        if is_best:
            copy_checkpoint(run.out_dir, "latest", "best")
        logger.log(record)
        if clock is not None:
            log.info(step_line(run, record, *clock.tick()))
    dist_utils.barrier()


def step_line(run: Run, record: dict, seconds: float, eta: float) -> str:
    """A finished step in one line for stderr: model, seed, step, period (and epoch),
    the mean loss terms, train and validation accuracy, images per second of the step
    (its training or push pass and the validation pass), the run's ETA."""
    step, period = record["step"], record["period"]
    what = "push" if period == "push" else f"{period} epoch {record['epoch']}"
    losses = {
        k[6:]: v for k, v in record.items() if k.startswith("train_") and k != "train_accuracy"
    }
    total = losses.pop("total", None)
    parts = ", ".join(f"{k} {v:.3g}" for k, v in losses.items())
    loss = f"loss {total:.3g} ({parts}), " if total is not None else ""
    train_acc = record.get("train_accuracy")
    accuracy = f"train acc {train_acc:.1f} %, " if train_acc is not None else ""
    images = len(run.datasets["push" if period == "push" else "train"])
    speed = images / seconds if seconds > 0 else 0.0
    return (
        f"train {run.kind} seed {run_seed(run.train)}: step {step + 1}/{len(run.steps)} "
        f"{what}: {loss}{accuracy}val acc {record['val_accuracy']:.1f} %, "
        f"{speed:.1f} img/s, ETA {format_duration(eta)}"
    )


def summarise(run: Run, state: RunState) -> dict:
    """The stage's metrics (no wall-clock values: those go to the run log)."""
    if state.best_step < 0:  # cannot happen: every schedule ends with pushed states
        raise ArtifactError(f"{run.out_dir}: no pushed state was reached; rerun train")
    return {
        "model": run.kind,
        "seed": run_seed(run.train),
        "steps": len(run.steps),
        "best_step": state.best_step,
        "best_val_accuracy": state.best_val,
        "final_val_accuracy": state.history[-1]["val_accuracy"],
        "final_train_accuracy": next(
            (h["train_accuracy"] for h in reversed(state.history) if "train_accuracy" in h), None
        ),
    }


def run_training(
    params: Params,
    kind: str,
    project_root: Path = Path("."),
    resume: bool = True,
    stop_after: Optional[int] = None,
    seed: Optional[int] = None,
) -> dict:
    """Train ``kind`` (protomask | protopnet) with one seed of train.seeds; return the
    stage's metrics.

    Args:
        params: the whole params (train, and data for the baseline's images).
        kind: which network.
        project_root: the project folder (artifacts are read and written under it).
        resume: continue from ``latest/`` when its fingerprint matches (else start over).
        stop_after: stop after this many steps of this call (tests of resumption).
        seed: the run's seed, one of train.seeds (None: the first of them).

    Returns:
        The metrics of metrics/train/<kind>/seed-<seed>.json (plus the training speed
        when it trained), or ``{"stopped_at_step": i}`` when ``stop_after`` stopped it.
    """
    seed = params.train.seeds[0] if seed is None else seed
    params = with_seed(params, seed)
    out_dir = project_root / layout.train_dir(kind, seed)
    metrics_path = project_root / layout.train_metrics(kind, seed)
    device = resolve_device(params.train.device)
    crops_fp = read_info(project_root / layout.CROPS_INDEX, "crops")["fingerprint"]
    fp = training_fingerprint(
        params, kind, crops_fp, precision_of(device, params.train), dist_utils.world_size()
    )
    steps = schedule(params.train, kind)
    if dist_utils.is_main():
        remove_leftovers(out_dir)
    done = finished_summary(out_dir, fp, len(steps)) if resume else None
    dist_utils.barrier()
    if done is not None:
        if dist_utils.is_main():
            write_json(metrics_path, done)
            if not (out_dir / "curves").is_dir():  # a run finished before curves existed
                history = RunState.of(load_checkpoint(checkpoint_path(out_dir, "final"))).history
                write_curves(history, out_dir / "curves", f"{kind} seed {seed}")
        return done

    run = start_run(params, kind, project_root, device, fp, steps)
    state = resume_or_restart(run, resume)
    ddp_model = dist_utils.wrap(run.model, device)
    logger = Logger(out_dir / "dvclive", state.history)
    started, first_step = time.perf_counter(), state.next_step
    clock = StepClock(len(steps) - first_step)
    for index in range(first_step, len(steps)):
        record, ddp_model = run_step(run, ddp_model, index)
        record_step(run, state, record, logger, clock)
        if (
            stop_after is not None
            and index + 1 - first_step >= stop_after
            and index + 1 < len(steps)
        ):
            logger.close()
            return {"stopped_at_step": index}
    logger.close()
    return finish_run(run, state, first_step, started, project_root)


def finish_run(
    run: Run, state: RunState, first_step: int, started: float, project_root: Path
) -> dict:
    """Copy ``final/``, write the summary, the stage's metrics and the run log."""
    summary = summarise(run, state)
    if not dist_utils.is_main():
        return summary
    metrics_path = project_root / layout.train_metrics(run.kind, run_seed(run.train))
    copy_checkpoint(run.out_dir, "latest", "final")
    write_json(run.out_dir / "summary.json", summary)
    write_json(metrics_path, summary)
    write_curves(state.history, run.out_dir / "curves", f"{run.kind} seed {run_seed(run.train)}")
    trained = sum(len(run.datasets["train"]) for s in run.steps[first_step:] if s.period != "push")
    elapsed = time.perf_counter() - started
    speed = round(trained / elapsed, 2) if trained else None
    write_run_log(
        project_root,
        f"train-{run.kind}-seed-{run_seed(run.train)}",
        {
            "seconds": round(elapsed, 2),
            "resumed_at_step": first_step,
            "train_images_per_second": speed,
        },
    )
    return {**summary, "train_images_per_second": speed} if speed else summary
