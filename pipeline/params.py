"""The parameter schema: the one place that defines every key of params.yaml.

Each section is a frozen dataclass; each field carries its documentation and its
allowed values (``choices`` or an ``Interval``). :func:`load_params` validates a YAML
file against the schema and raises :class:`ParamsError` with one line naming the key,
the allowed values and the value found. The README's params reference is generated
from these dataclasses (:func:`params_reference_markdown`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.errors import ParamsError
from pipeline.layout import SYNTHETIC_ROOT


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``str`` gives the usual bracket notation, e.g. ``[0, 0.5)``."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = True
    hi_closed: bool = True

    def __contains__(self, value: float) -> bool:
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below

    def __str__(self) -> str:
        def fmt(v: float) -> str:
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        left = "[" if self.lo_closed and not math.isinf(self.lo) else "("
        right = "]" if self.hi_closed and not math.isinf(self.hi) else ")"
        return f"{left}{fmt(self.lo)}, {fmt(self.hi)}{right}"


def param(default: Any, doc: str, *, choices: tuple | None = None,
          interval: Interval | None = None, speed_only: bool = False,
          stage: str | None = None) -> Any:
    """A schema field: default, one-line documentation and allowed values.

    ``speed_only`` marks a key that changes only speed or placement (threads, devices,
    batch sizes), never a result: :func:`result_fingerprint` and :func:`result_keys` (the
    DVC params lists) leave it out, so changing it invalidates no finished work.
    ``stage`` names the DVC stage that reads the key when it is not the stage of its
    section (e.g. compare reads some evaluate keys): only that stage's params list has it.
    """
    meta = {"doc": doc, "choices": choices, "interval": interval, "speed_only": speed_only,
            "stage": stage}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """A nested section (a dataclass) with its defaults."""
    return field(default_factory=cls, metadata={"doc": doc, "choices": None, "interval": None,
                                                "speed_only": False, "stage": None})


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SyntheticParams:
    """The built-in synthetic fine-grained dataset (CUB layout, with ground truth)."""

    seed: int = param(0, "Seed of the generator: same seed, same bytes.",
                      interval=Interval(0, 2**31 - 1))
    num_classes: int = param(10, "Number of classes (distinct part-attribute combinations).",
                             interval=Interval(2, 200))
    images_per_class: int = param(40, "Images generated per class.", interval=Interval(4, 10000))
    image_size: int = param(160, "Side of the square images in pixels.",
                            interval=Interval(64, 1024))
    test_fraction: float = param(0.3, "Share of each class written as test in train_test_split.txt.",
                                 interval=Interval(0, 1, lo_closed=False, hi_closed=False))
    distractors: int = param(5, "Largest number of distractor shapes per image.",
                             interval=Interval(0, 50))


@dataclass(frozen=True)
class DataParams:
    """prepare: which dataset, where, and how it is split."""

    source: str = param("synthetic", "Dataset kind: the built-in synthetic set, CUB-200-2011, "
                        "or class folders (root/<class>/<image>).",
                        choices=("synthetic", "cub", "folder"))
    root: str = param("data/synthetic", "Dataset root. For source synthetic it must be "
                      "data/synthetic, where the synthesize stage writes.")
    seed: int = param(0, "Seed of the validation split (and of the folder train/test split).",
                      interval=Interval(0, 2**31 - 1))
    val_fraction: float = param(0.15, "Share of each class's training images moved to "
                                "validation (stratified).", interval=Interval(0, 0.5, hi_closed=False))
    test_fraction: float = param(0.3, "Share of each class held out as test; source folder only "
                                 "(CUB and synthetic carry their own split).",
                                 interval=Interval(0, 1, lo_closed=False, hi_closed=False))
    max_reject_fraction: float = param(0.05, "prepare fails when more than this share of "
                                       "images cannot be decoded.", interval=Interval(0, 1))
    decode_workers: int = param(2, "Threads decoding images in prepare.",
                                interval=Interval(1, 256), speed_only=True)
    synthetic: SyntheticParams = section(SyntheticParams, "The synthetic dataset generator.")





# ------------------------------------------------------------------------ segment
@dataclass(frozen=True)
class SamParams:
    """Segment Anything automatic mask generation (used when segment.backend is sam)."""

    model_type: str = param("vit_h", "SAM architecture of the checkpoint (tiny: the small "
                            "test model of pipeline/segmenters/tiny_sam.py).",
                            choices=("vit_b", "vit_l", "vit_h", "tiny"))
    checkpoint: Optional[str] = param(None, "Local SAM checkpoint file (e.g. "
                                      "sam_vit_h_4b8939.pth); nothing is ever downloaded.")
    points_per_side: int = param(32, "Point prompts per image side.", interval=Interval(1, 256))
    points_per_batch: Optional[int] = param(None, "Prompts decoded in one call (memory; "
                                            "null: 1024 on CUDA, 256 on CPU).",
                                            interval=Interval(1, 65536), speed_only=True)
    pred_iou_thresh: float = param(0.86, "Keep masks whose predicted IoU exceeds this.",
                                   interval=Interval(0, 1))
    stability_score_thresh: float = param(0.92, "Keep masks whose stability score exceeds this.",
                                          interval=Interval(0, 1))
    stability_score_offset: float = param(1.0, "Logit offset of the stability score.",
                                          interval=Interval(0, 100))
    box_nms_thresh: float = param(0.7, "Box IoU of the NMS among one crop's masks.",
                                  interval=Interval(0, 1))
    crop_n_layers: int = param(1, "Layers of image crops segmented again (0: none).",
                               interval=Interval(0, 4))
    crop_nms_thresh: float = param(0.7, "Box IoU of the NMS across crops.",
                                   interval=Interval(0, 1))
    crop_overlap_ratio: float = param(512 / 1500, "Overlap of neighbouring crops.",
                                      interval=Interval(0, 1, hi_closed=False))
    crop_n_points_downscale_factor: int = param(2, "Point grid shrink per crop layer.",
                                                interval=Interval(1, 16))
    min_mask_region_area: int = param(0, "Remove holes and islands smaller than this (px).",
                                      interval=Interval(0, 1_000_000))
    images_per_batch: int = param(4, "Images whose encoder pass runs as one batch.",
                                  interval=Interval(1, 256), speed_only=True)
    bf16: bool = param(False, "bf16 autocast on CUDA (fp32 otherwise).")


@dataclass(frozen=True)
class ClassicalParams:
    """The scikit-image segmenter (segment.backend classical, the offline default)."""

    method: str = param("felzenszwalb", "Region algorithm.", choices=("felzenszwalb", "slic"))
    scale: float = param(100.0, "felzenszwalb scale of the finest level (x4 per level).",
                         interval=Interval(0, 1e6, lo_closed=False))
    sigma: float = param(0.4, "Gaussian smoothing before segmenting.", interval=Interval(0, 10))
    min_size: int = param(20, "felzenszwalb smallest region of the finest level (px, x2 "
                          "per level).", interval=Interval(1, 1_000_000))
    n_segments: int = param(64, "slic regions of the finest level (/4 per level).",
                            interval=Interval(2, 100_000))
    compactness: float = param(10.0, "slic compactness.", interval=Interval(0, 1e4, lo_closed=False))
    levels: int = param(3, "Granularities segmented (finest first).", interval=Interval(1, 6))
    min_area_fraction: float = param(0.002, "Drop regions smaller than this share of the image.",
                                     interval=Interval(0, 1))
    max_area_fraction: float = param(0.1, "Drop regions larger than this share of the image "
                                     "(0.1: background regions, whose boxes span the whole "
                                     "image, do not crowd the parts out of the views).",
                                     interval=Interval(0, 1))
    dedup_iou: float = param(0.9, "A region found again at a coarser level (mask IoU above "
                             "this) is kept once.", interval=Interval(0, 1))
    stability_score_thresh: float = param(0.75, "Keep regions whose stability (best IoU with a "
                                          "region of a neighbouring level) reaches this, as "
                                          "SAM keeps stable masks.", interval=Interval(0, 1))
    max_masks: int = param(64, "Keep at most this many masks per image (largest first).",
                           interval=Interval(1, 10000))


@dataclass(frozen=True)
class SegmentParams:
    """segment: masks for every image, in HDF5 shards."""

    backend: str = param("classical", "Segmenter: sam (needs segment.sam.checkpoint) or the "
                         "offline scikit-image one.", choices=("classical", "sam"))
    device: str = param("auto", "auto | cpu | cuda | cuda:N (auto: every GPU if any, else CPU).",
                        speed_only=True)
    shard_size: int = param(32, "Images per HDF5 shard (the unit of work and of resume).",
                            interval=Interval(1, 1_000_000))
    workers: int = param(2, "Local dask worker processes on CPU (one per GPU on GPUs).",
                         interval=Interval(1, 1024), speed_only=True)
    scheduler: Optional[str] = param(None, "Address of an existing dask scheduler "
                                     "(e.g. tcp://10.0.0.5:8786); null: a local cluster.",
                                     speed_only=True)
    sam: SamParams = section(SamParams, "Segment Anything settings.")
    classical: ClassicalParams = section(ClassicalParams, "Classical segmenter settings.")


# -------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class CropsParams:
    """crops: the M views of every image, cut from mask boxes."""

    num_views: int = param(8, "Views per image (M): the largest masks, cycled when fewer.",
                           interval=Interval(1, 256))
    size: int = param(64, "Side of the square crops in pixels (the paper: 224).",
                      interval=Interval(8, 1024))
    min_box_size: int = param(1, "Drop masks whose box is at most this many px wide or tall.",
                              interval=Interval(0, 10000))
    order: str = param("area", "Which masks come first.",
                       choices=("area", "predicted_iou", "stability_score"))
    fill: str = param("zero", "Pixels outside the mask: the image itself (the reference implementation's "
                      "setting), zero (the default: the clutter and distractors around a part "
                      "are blanked out), or the "
                      "mask's mean colour.", choices=("original", "zero", "mean"))
    compression: str = param("gzip", "Compression of the crop shards' images: gzip (level 1, the "
                             "smallest files), lzf (faster to read and write, larger), none.",
                             choices=("gzip", "lzf", "none"))


# -------------------------------------------------------------------------- train
@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation of the views; never applied in push or eval."""

    per: str = param("image", "One random transform per image (all its views) or per view.",
                     choices=("image", "view"))
    flip: float = param(0.5, "Probability of a horizontal flip.", interval=Interval(0, 1))
    perspective: float = param(0.1, "Distortion scale of the random perspective (0: off).",
                               interval=Interval(0, 1))
    perspective_p: float = param(0.3, "Probability of the random perspective.",
                                 interval=Interval(0, 1))
    rotate: float = param(15.0, "Largest rotation in degrees.", interval=Interval(0, 180))
    shear: float = param(15.0, "Largest shear in degrees.", interval=Interval(0, 89))
    brightness: float = param(0.2, "Colour jitter: brightness.", interval=Interval(0, 1))
    contrast: float = param(0.2, "Colour jitter: contrast.", interval=Interval(0, 1))
    saturation: float = param(0.2, "Colour jitter: saturation.", interval=Interval(0, 1))
    hue: float = param(0.0, "Colour jitter: hue (keep 0 where colour is the class).",
                       interval=Interval(0, 0.5))


@dataclass(frozen=True)
class ModelParams:
    """The networks: ProtoMask on views and the ProtoPNet baseline on full images."""

    backbone: str = param("efficientnet_lite0", "Shared CNN trunk (efficientnet_lite0 ships "
                          "its ImageNet weights; tiny_cnn is for tests and smoke runs).",
                          choices=("efficientnet_lite0", "resnet18", "resnet34", "resnet50",
                                   "resnet101", "resnet152", "vgg16", "vgg19", "densenet121",
                                   "densenet161", "tiny_cnn"))
    weights: str = param("imagenet", "Trunk weights: imagenet (shipped for efficientnet_lite0, "
                         "torchvision's cache otherwise), none, or a local file path.")
    prototypes_per_class: int = param(10, "Prototypes per class.", interval=Interval(1, 100))
    prototype_dim: int = param(32, "Length of the view embedding and of each prototype (the "
                               "reference: 1280).", interval=Interval(1, 8192))
    off_class_weight: float = param(-0.5, "Initial last-layer weight between a prototype and "
                                    "the other classes (ProtoPNet: -0.5; the reference: 0).",
                                    interval=Interval(-10, 10))
    freeze_bn: bool = param(True, "Keep the trunk's BatchNorm in eval mode (ImageNet running "
                            "statistics, affine weights still trained). EfficientNet-Lite0's "
                            "BatchNorm momentum is 0.01: in a short run its running statistics "
                            "lag the batch statistics it trains with, so evaluation and push "
                            "see other features than training did.")
    baseline_image_size: int = param(160, "Side of the full image fed to the ProtoPNet "
                                     "baseline (the synthetic images' own size: nothing is "
                                     "lost to resizing).", interval=Interval(16, 1024))
    addon_init: str = param("default", "Initialisation of the add-on's 1x1 convs of both "
                            "models: PyTorch's default, or ProtoPNet's kaiming normal (fan_out). "
                            "With a 1280-channel trunk kaiming puts two thirds of the sigmoid "
                            "outputs in saturation at the start and the baseline does not learn "
                            "in a short schedule.", choices=("default", "kaiming"))


@dataclass(frozen=True)
class LossParams:
    """Loss coefficients."""

    cross_entropy: float = param(1.0, "Class-weighted cross-entropy.", interval=Interval(0, 100))
    cluster: float = param(0.8, "Cluster cost.", interval=Interval(0, 100))
    separation: float = param(0.2, "Separation cost (subtracted).", interval=Interval(0, 100))
    diversity: float = param(0.2, "Diversity among a class's prototypes.", interval=Interval(0, 100))
    l1: float = param(1e-3, "L1 on wrong-class last-layer weights (last-layer period).",
                      interval=Interval(0, 100))


@dataclass(frozen=True)
class OptimParams:
    """Learning rates per parameter group and the joint period's StepLR."""

    trunk_lr: float = param(1e-4, "Adam learning rate of the trunk.", interval=Interval(0, 1))
    add_on_lr: float = param(3e-3, "Adam learning rate of the add-on layers.",
                             interval=Interval(0, 1))
    prototypes_lr: float = param(3e-3, "Adam learning rate of the prototypes.",
                                 interval=Interval(0, 1))
    last_layer_lr: float = param(3e-4, "Adam learning rate of the last layer.",
                                 interval=Interval(0, 1))
    weight_decay: float = param(1e-3, "Weight decay of trunk and add-on.", interval=Interval(0, 1))
    step_size: int = param(5, "Joint period: halve the learning rates every this many epochs.",
                           interval=Interval(1, 10000))
    gamma: float = param(0.5, "Joint period: the StepLR factor.", interval=Interval(0, 1))


@dataclass(frozen=True)
class TrainParams:
    """train: both models, same data, same schedule."""

    seed: int = param(0, "Seed of initialisation, shuffling and augmentation.",
                      interval=Interval(0, 2**31 - 1))
    device: str = param("auto", "auto | cpu | cuda | cuda:N.", speed_only=True)
    bf16: bool = param(True, "bf16 autocast on CUDA (ignored on CPU).")
    channels_last: bool = param(True, "channels_last memory format on CUDA.", speed_only=True)
    batch_size: int = param(16, "Images per step (each with all its views).",
                            interval=Interval(1, 4096))
    accumulate: int = param(1, "Gradient accumulation steps per optimiser step.",
                            interval=Interval(1, 1024))
    loader_workers: int = param(2, "DataLoader worker processes.", interval=Interval(0, 64),
                                speed_only=True)
    warmup_epochs: int = param(2, "Warm-up: trunk frozen, add-on and prototypes trained.",
                               interval=Interval(0, 10000))
    joint_epochs: int = param(8, "Joint: everything trained.", interval=Interval(0, 10000))
    last_layer_epochs: int = param(3, "After the push: only the last layer trained.",
                                   interval=Interval(0, 10000))
    model: ModelParams = section(ModelParams, "The networks.")
    loss: LossParams = section(LossParams, "Loss coefficients.")
    optim: OptimParams = section(OptimParams, "Optimisers and schedule.")
    augment: AugmentParams = section(AugmentParams, "Training augmentation.")


# ----------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class PerturbParams:
    """The perturbed copy of every test image (stability, PSC, PRC, CRC): all four steps in
    this order, as the reference's continuity pipeline (colour jitter, noise, blur, JPEG)."""

    brightness: float = param(1.125, "Colour jitter: brightness factor (1: unchanged).",
                              interval=Interval(0, 10))
    contrast: float = param(1.125, "Colour jitter: contrast factor (1: unchanged).",
                            interval=Interval(0, 10))
    saturation: float = param(1.125, "Colour jitter: saturation factor (1: unchanged).",
                              interval=Interval(0, 10))
    hue: float = param(0.0, "Colour jitter: hue shift in turns (the reference: 0.05; 0 here "
                       "because colour names the class in the synthetic set).",
                       interval=Interval(-0.5, 0.5))
    noise_sigma: float = param(2.24, "Gaussian noise standard deviation in grey levels "
                               "(the reference: variance 5).", interval=Interval(0, 255))
    blur: int = param(3, "Box blur kernel side in pixels (1: none).", interval=Interval(1, 31))
    jpeg_quality: Optional[int] = param(90, "JPEG re-encoding quality (null: none).",
                                        interval=Interval(1, 100))


@dataclass(frozen=True)
class EvaluateParams:
    """evaluate: explainability metrics and the visual report, on test."""

    device: str = param("auto", "auto (the GPU if there is one), cpu, cuda or cuda:N.",
                        speed_only=True)
    checkpoint: str = param("best", "Which checkpoint of the train stage is evaluated.",
                            choices=("best", "final"))
    saliency: str = param("prp", "Saliency of a prototype: PRP (LRP rules, zennit) or "
                          "input x gradient (plain autograd).", choices=("prp", "gradient"))
    lrp_composite: str = param("epsilon_plus_box", "PRP rules: ZBox first conv + ZPlus convs "
                               "(the reference's), or zennit's EpsilonGammaBox / "
                               "EpsilonPlusFlat.", choices=("epsilon_plus_box",
                                                            "epsilon_gamma_box",
                                                            "epsilon_plus_flat"))
    top_k: int = param(5, "Prototypes explained per test image (the reference: 5).",
                       interval=Interval(1, 100))
    top_fraction: float = param(0.05, "Share of the saliency pixels forming the mask S "
                                "(the reference: top 5 %).", interval=Interval(0, 1, lo_closed=False))
    batch_size: int = param(16, "Test images per batch (saliency runs on twice as many "
                            "rows at a time: memory).", interval=Interval(1, 4096),
                            speed_only=True)
    max_images: Optional[int] = param(None, "Evaluate only the first this many test images "
                                      "(null: all).", interval=Interval(1, 10_000_000))
    sanity_images: int = param(16, "Test images of the model-randomisation check (their top-1 "
                               "prototype; 0: skip).", interval=Interval(0, 100000))
    report_prototypes: Optional[int] = param(20, "Prototypes shown in the report, round-robin "
                                             "over the classes (null: all).",
                                             interval=Interval(0, 100000))
    report_images: int = param(8, "Test images shown in the report.",
                               interval=Interval(0, 100000))
    seed: int = param(0, "Seed of the perturbation noise and of the randomised weights.",
                      interval=Interval(0, 2**31 - 1))
    verdict_min_test_images: int = param(30, "compare: no verdict on the paper's claim with "
                                         "fewer test images than this.",
                                         interval=Interval(1, 10_000_000), stage="compare")
    verdict_min_seeds: int = param(3, "compare: no verdict with fewer training seeds per model "
                                   "than this (one seed's differences are within seed noise).",
                                   interval=Interval(1, 1000), stage="compare")
    verdict_max_fallback_share: float = param(50.0, "compare: no verdict when more than this "
                                              "share (%) of test images has only whole-image "
                                              "views (no usable mask).",
                                              interval=Interval(0, 100), stage="compare")
    perturb: PerturbParams = section(PerturbParams, "The perturbed copy of each test image.")


@dataclass(frozen=True)
class Params:
    """The whole params.yaml, one section per stage."""

    data: DataParams = section(DataParams, "Dataset and splits (synthesize, prepare).")
    segment: SegmentParams = section(SegmentParams, "Masks (segment).")
    crops: CropsParams = section(CropsParams, "Views from mask boxes (crops).")
    train: TrainParams = section(TrainParams, "Training both models (train).")
    evaluate: EvaluateParams = section(EvaluateParams, "Explainability metrics and report "
                                       "(evaluate, compare).")

    def check(self) -> None:
        """Rules that tie several keys together (relative paths: from the project root)."""
        _check_path_length("data.root", self.data.root)
        if self.data.source == "synthetic" and Path(self.data.root) != SYNTHETIC_ROOT:
            raise ParamsError(f"data.root must be {SYNTHETIC_ROOT} when data.source is synthetic, "
                              f"got {self.data.root!r}")
        if self.data.source != "synthetic" and _within(self.data.root, SYNTHETIC_ROOT):
            raise ParamsError(f"data.root {self.data.root!r} lies in {SYNTHETIC_ROOT}, which the "
                              f"synthesize stage replaces when data.source is "
                              f"{self.data.source}: move your dataset elsewhere and point "
                              "data.root at it")
        if self.data.source == "folder" and _within(SYNTHETIC_ROOT, self.data.root):
            raise ParamsError(f"data.root {self.data.root!r} holds {SYNTHETIC_ROOT}, which the "
                              "synthesize stage writes and the folder reader would take for a "
                              "class: put your class folders in a folder of their own")
        for key, value in (("segment.device", self.segment.device),
                           ("train.device", self.train.device),
                           ("evaluate.device", self.evaluate.device)):
            if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
                raise ParamsError(f"{key} must be one of auto | cpu | cuda | cuda:N, "
                                  f"got {value!r}")
        if self.segment.backend == "sam" and not self.segment.sam.checkpoint:
            raise ParamsError("segment.sam.checkpoint must name a local SAM checkpoint file "
                              "when segment.backend is sam, got null")


# ----------------------------------------------------------------- path rules
NAME_MAX = 255      # bytes of one path component (Linux, macOS, Windows)
PATH_MAX = 4096     # bytes of a whole path (Linux)


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted, shortened to ``limit`` characters for a one-line message."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _check_path_length(key: str, value: str) -> None:
    """Refuse a path no filesystem can hold: a component over NAME_MAX or the whole path
    over PATH_MAX bytes (as the filesystem encodes it)."""
    encoded = os.fsencode(value)
    if len(encoded) > PATH_MAX:
        raise ParamsError(f"{key} is {len(encoded)} bytes long, more than a path may have "
                          f"({PATH_MAX}): use a shorter path, got {_shown(value)}")
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            raise ParamsError(f"{key} has a path component of {len(part)} bytes, more than a "
                              f"file name may have ({NAME_MAX}): use a shorter path, got "
                              f"{_shown(value)}")


def _within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it: by the text of both paths, and by
    their real locations seen from the current folder (symlinks followed)."""
    def inside(a: Path, b: Path) -> bool:
        return a == b or b in a.parents

    if inside(Path(os.path.normpath(path)), Path(os.path.normpath(folder))):
        return True
    try:
        return inside(Path(path).resolve(), Path(folder).resolve())
    except (OSError, RuntimeError):    # unreadable or a symlink loop: the text decided
        return False


# ----------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints accepted as floats)."""
    if typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"schema type {tp} of {key} is not supported")
    if not ok:
        raise ParamsError(f"{key} must be of type {_type_name(tp)}, got {value!r}")
    return value


def build_section(cls: type, raw: Any, prefix: str) -> Any:
    """Validate the mapping ``raw`` against dataclass ``cls``; missing keys take defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix.rstrip('.') or 'the file'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ParamsError(f"unknown key {prefix}{key} (allowed: {allowed})")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = build_section(tp, raw[name], key + ".")
            continue
        value = _coerce(raw[name], tp, key)
        choices, interval = f.metadata.get("choices"), f.metadata.get("interval")
        if value is not None and choices is not None and value not in choices:
            allowed = " | ".join(str(c) for c in choices)
            raise ParamsError(f"{key} must be one of {allowed}, got {value!r}")
        if value is not None and interval is not None and value not in interval:
            raise ParamsError(f"{key} must be in {interval}, got {value!r}")
        values[name] = value
    return cls(**values)


# ------------------------------------------------------------------- reading
class DuplicateKeyError(yaml.YAMLError):
    """A mapping of the params file names one key twice."""


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two changes for params files.

    - A key written twice in one mapping (at any depth) is an error naming the dotted key
      and both lines, where plain PyYAML silently keeps the last value.
    - Scientific notation without a dot or without an exponent sign (``1e-4``, ``3E5``,
      ``1.5e3``) is a float, as in YAML 1.2, which DVC reads; YAML 1.1 (PyYAML) reads
      it as a string.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "", set())
        return super().construct_document(node)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _refuse_duplicate_keys(node: yaml.Node, prefix: str, seen: set[int]) -> None:
    """Raise DuplicateKeyError for the first key written twice in a mapping below ``node``."""
    if id(node) in seen:           # an alias to a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{prefix.rstrip('.')}[{index}].", seen)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            _refuse_duplicate_keys(value_node, prefix, seen)
            continue
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise DuplicateKeyError(f"key {prefix}{key} is written twice (lines {lines[key]} "
                                    f"and {line}): keep one")
        lines[key] = line
        _refuse_duplicate_keys(value_node, f"{prefix}{key}.", seen)


def read_params_yaml(path: Path) -> Any:
    """The parsed params file; every problem is a one-line ParamsError naming ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read the params file "
                          f"({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ParamsError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}): save it "
                          "as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=ParamsLoader)
    except DuplicateKeyError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        raise ParamsError(f"{path}: the file holds no settings (empty or only comments); "
                          "write the defaults with: python -m pipeline.params > params.yaml")
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; errors are one line prefixed with the file name."""
    path = Path(path)
    raw = read_params_yaml(path)
    try:
        params = build_section(Params, raw, "")
        params.check()
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    return params


def as_dict(obj: Any) -> dict:
    """A section as plain data (for fingerprints, YAML and metadata)."""
    return dataclasses.asdict(obj)


def text_fingerprint(text: str) -> str:
    """A short stable hash of a string (16 hex digits of its SHA-256)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(*sections: Any) -> str:
    """A short stable hash of one or more sections' values (order of keys ignored)."""
    return _hash_json([as_dict(s) for s in sections])


def _hash_json(data: Any) -> str:
    return text_fingerprint(json.dumps(data, sort_keys=True, separators=(",", ":")))


def is_speed_only(f: dataclasses.Field) -> bool:
    """Whether a schema field changes only speed or placement, never a result."""
    return bool(f.metadata.get("speed_only"))


def result_dict(obj: Any) -> dict:
    """A section as plain data without its speed-only keys (at any depth)."""
    out = {}
    for f in dataclasses.fields(obj):
        if is_speed_only(f):
            continue
        value = getattr(obj, f.name)
        out[f.name] = result_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def result_fingerprint(*sections: Any) -> str:
    """Like :func:`fingerprint`, but blind to speed-only keys: a cached result stays valid
    when only threads, devices or batch sizes change. Equal to :func:`fingerprint` for
    sections without speed-only keys."""
    return _hash_json([result_dict(s) for s in sections])


def _section_class(dotted: str) -> type:
    """The dataclass of a dotted section name, e.g. ``segment.sam``."""
    cls: Any = Params
    for name in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hint = typing.get_type_hints(cls).get(name)
        if name not in fields or not dataclasses.is_dataclass(hint):
            raise KeyError(f"{dotted} is not a section of the params schema")
        cls = hint
    return cls


def _is_plain(cls: type) -> bool:
    """A section without speed-only keys and without keys read by another stage."""
    hints = typing.get_type_hints(cls)
    return all(not is_speed_only(f) and f.metadata.get("stage") is None and
               (not dataclasses.is_dataclass(hints[f.name]) or _is_plain(hints[f.name]))
               for f in dataclasses.fields(cls))


def result_keys(section: str, stage: str | None = None) -> list[str]:
    """The dotted keys of ``section`` that can change a result, in schema order.

    A subsection without speed-only keys is named whole (``segment.classical``), as DVC
    tracks a mapping; a section without any is just its own name (``crops``). With
    ``stage``, only the keys marked as read by that stage (``param(stage=...)``); without,
    only the unmarked ones (read by the section's own stage).
    """
    cls = _section_class(section)
    if _is_plain(cls):
        return [section] if stage is None else []
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        dotted = f"{section}.{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(result_keys(dotted, stage))
        elif not is_speed_only(f) and f.metadata.get("stage") == stage:
            keys.append(dotted)
    return keys


def speed_only_keys(section: str = "") -> list[str]:
    """The dotted speed-only keys below ``section`` (all of them by default)."""
    cls = _section_class(section) if section else Params
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        dotted = f"{section}.{f.name}" if section else f.name
        if is_speed_only(f):
            keys.append(dotted)
        elif dataclasses.is_dataclass(hints[f.name]):
            keys.extend(speed_only_keys(dotted))
    return keys


def dvc_stage_params() -> dict[str, list[str]]:
    """Each DVC stage's ``params:`` list in dvc.yaml: exactly the keys that change its
    results, so a speed-only change (``dvc exp run -S train.loader_workers=4``) reruns
    nothing. prepare reads the dataset at data.root (a dep), not the generator's settings."""
    return {
        "synthesize": ["data.source", "data.synthetic"],
        "prepare": [k for k in result_keys("data") if k != "data.synthetic"],
        "segment": result_keys("segment"),
        "crops": result_keys("crops"),
        "train": result_keys("train"),
        "evaluate": result_keys("evaluate"),
        "compare": result_keys("evaluate", stage="compare"),
    }


SPEED_ONLY_NOTE = "Speed only: changes no result, so DVC reruns nothing for it."


def defaults_yaml() -> str:
    """params.yaml with every default and each key's documentation as a comment."""
    lines = ["# protomask parameters, one section per stage. Generated from the schema in",
             "# pipeline/params.py (python -m pipeline.params > params.yaml); every key is",
             "# validated when a stage starts."]

    def emit(obj: Any, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            doc = f.metadata.get("doc", "")
            allowed = f.metadata.get("choices") or f.metadata.get("interval")
            if allowed is not None and not isinstance(allowed, Interval):
                allowed = " | ".join(map(str, allowed))
            comment = doc + (f" Allowed: {allowed}." if allowed is not None else "")
            comment += f" {SPEED_ONLY_NOTE}" if is_speed_only(f) else ""
            lines.append(f"{indent}# {comment}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                emit(value, indent + "  ")
            else:
                dumped = yaml.safe_dump({f.name: value}, default_flow_style=True).strip()
                lines.append(f"{indent}{dumped[1:-1]}")

    emit(Params(), "")
    return "\n".join(lines) + "\n"


def _rows(cls: type, prefix: str) -> list[tuple[str, str, str, str, str]]:
    rows = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(_rows(tp, f"{prefix}{f.name}."))
            continue
        choices, interval = f.metadata.get("choices"), f.metadata.get("interval")
        allowed = (" \\| ".join(map(str, choices)) if choices else
                   str(interval) if interval else "")
        default = getattr(defaults, f.name)
        meaning = f.metadata["doc"] + (f" {SPEED_ONLY_NOTE}" if is_speed_only(f) else "")
        meaning = meaning.replace("|", "\\|")       # a literal bar, not a new cell
        rows.append((f"{prefix}{f.name}", _type_name(tp), f"`{default!r}`" if default is not None
                     else "`null`", allowed, meaning))
    return rows


def params_reference_markdown() -> str:
    """The params reference table, generated from the schema (kept in README.md)."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for row in _rows(Params, ""):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


README_MARKERS = ("<!-- params-reference:start -->\n", "<!-- params-reference:end -->")


def readme_with_reference(text: str) -> str:
    """README text with the block between the markers replaced by the generated table."""
    start, end = README_MARKERS
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}{params_reference_markdown()}\n{end}{tail}"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--readme"]:
        readme = Path("README.md")
        readme.write_text(readme_with_reference(readme.read_text()))
    else:
        print(defaults_yaml(), end="")
