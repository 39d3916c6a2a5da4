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

MODELS = ("protomask", "protopnet")  # the trained networks, one folder each
TRAIN_DIR = ARTIFACTS / "train"  # one persistent folder per model


def train_metrics(model: str) -> Path:
    """metrics/train/<model>.json"""
    return METRICS / "train" / f"{model}.json"


EVALUATE_DIR = ARTIFACTS / "evaluate"  # one report folder per model, and the comparison
COMPARISON = EVALUATE_DIR / "comparison.md"


def evaluate_dir(model: str) -> Path:
    """artifacts/evaluate/<model> (the report: index.html, PNGs, metrics.json, timings)"""
    return EVALUATE_DIR / model


def evaluate_metrics(model: str) -> Path:
    """metrics/evaluate/<model>.json"""
    return METRICS / "evaluate" / f"{model}.json"


# Wall-clock facts of the last run of each stage (seconds, images/s, shards reused): not a
# DVC output and not in git, so a rerun with the same inputs changes no tracked hash.
RUN_LOGS = Path("logs")


def run_log(name: str) -> Path:
    """logs/<name>.json (e.g. logs/segment.json, logs/train-protomask.json)"""
    return RUN_LOGS / f"{name}.json"


# Advisory locks of stages run by hand (one per stage, per model for train and evaluate).
LOCKS = Path(".protomask/locks")
