"""Where every artifact lives, relative to the project root: the one place for paths.

dvc.yaml repeats these paths (DVC needs them literally); tests/test_layout.py checks
that the two agree.
"""

from __future__ import annotations

from pathlib import Path

SYNTHETIC_ROOT = Path("data/synthetic")

ARTIFACTS = Path("artifacts")
METRICS = Path("metrics")

PREPARE_DIR = ARTIFACTS / "prepare"
IMAGES_INDEX = PREPARE_DIR / "images.parquet"
REJECTS_TABLE = PREPARE_DIR / "rejects.parquet"
DUPLICATES_TABLE = PREPARE_DIR / "duplicates.parquet"
PREPARE_METRICS = METRICS / "prepare.json"

SEGMENT_DIR = ARTIFACTS / "segment"  # mask shards (a persistent DVC output)
SEGMENT_METRICS = METRICS / "segment.json"

CROPS_DIR = ARTIFACTS / "crops"  # crop shards + crops index (persistent output)
CROPS_INDEX = CROPS_DIR / "crops.parquet"
CROPS_METRICS = METRICS / "crops.json"

MODELS = ("protomask", "protopnet", "protopool", "pipnet")  # the trained networks
TRAIN_DIR = ARTIFACTS / "train"  # one folder per model, one persistent folder per seed


def run_folder(model: str, seed: int) -> Path:
    """<model>/seed-<seed>: the relative folder of one trained model (a model and a seed)."""
    return Path(model) / f"seed-{seed}"


def train_dir(model: str, seed: int) -> Path:
    """artifacts/train/<model>/seed-<seed> (checkpoints latest/best/final, dvclive, push)"""
    return TRAIN_DIR / run_folder(model, seed)


def train_metrics(model: str, seed: int) -> Path:
    """metrics/train/<model>/seed-<seed>.json"""
    return METRICS / "train" / model / f"seed-{seed}.json"


EVALUATE_DIR = ARTIFACTS / "evaluate"  # one report folder per model and seed
EVALUATE_METRICS = METRICS / "evaluate"  # every metric of a run: what compare reads
HEADLINE_METRICS = METRICS / "headline"  # a run's headline: the DVC metrics of evaluate
COMPARISON = EVALUATE_DIR / "comparison.md"
COMPARISON_JSON = EVALUATE_DIR / "comparison.json"  # mean +- std, paired differences, claims
COMPARE_METRICS = METRICS / "compare.json"  # the verdict: the DVC metric of compare


def evaluate_dir(model: str, seed: int) -> Path:
    """artifacts/evaluate/<model>/seed-<seed> (the report: index.html, PNGs, metrics.json)"""
    return EVALUATE_DIR / run_folder(model, seed)


def evaluate_metrics(model: str, seed: int) -> Path:
    """metrics/evaluate/<model>/seed-<seed>.json"""
    return EVALUATE_METRICS / model / f"seed-{seed}.json"


def headline_metrics(model: str, seed: int) -> Path:
    """metrics/headline/<model>/seed-<seed>.json"""
    return HEADLINE_METRICS / model / f"seed-{seed}.json"


# Wall-clock facts of the last run of each stage (seconds, images/s, shards reused): not a
# DVC output and not in git, so a rerun with the same inputs changes no tracked hash.
RUN_LOGS = Path("logs")


def run_log(name: str) -> Path:
    """logs/<name>.json (e.g. logs/segment.json, logs/train-protomask-seed-0.json)"""
    return RUN_LOGS / f"{name}.json"


# Advisory locks of stages run by hand (one per stage, per model for train and evaluate).
LOCKS = Path(".protomask/locks")
