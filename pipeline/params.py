"""The parameter schema: the one place that defines every key of params.yaml.

Each section is a frozen dataclass; each field carries its documentation and its
allowed values (``choices`` or an ``Interval``). :func:`load_params` validates a YAML
file against the schema and raises :class:`ParamsError` with one line naming the key,
the allowed values and the value found. The README's params reference is generated
from these dataclasses (pipeline/param_docs.py). The field helpers and fingerprints are
in pipeline/param_fields.py, the YAML reading and checks in pipeline/param_loading.py;
this module re-exports them, so ``pipeline.params`` stays the one import for callers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.errors import ParamsError
from pipeline.layout import SYNTHETIC_ROOT
from pipeline.model_params import (
    PROTOPNET_RECIPE,
    LossParams,
    ModelParams,
    OptimParams,
    PIPNetParams,
    ProtoPoolParams,
    PrototypeModelParams,
)
from pipeline.param_fields import (
    Interval,
    as_dict,
    choices_of,
    fingerprint,
    is_speed_only,
    param,
    result_dict,
    result_fingerprint,
    section,
    text_fingerprint,
)
from pipeline.param_loading import (
    ParamsLoader,
    build_section,
    check_path_length,
    read_params_yaml,
    within,
)
from pipeline.sam2_params import Sam2Params

__all__ = [
    "AugmentParams",
    "ClassicalParams",
    "CropsParams",
    "DataParams",
    "EvaluateParams",
    "Interval",
    "LossParams",
    "ModelParams",
    "OptimParams",
    "Params",
    "ParamsLoader",
    "PIPNetParams",
    "PerturbParams",
    "ProtoPoolParams",
    "PrototypeModelParams",
    "Sam2Params",
    "SamParams",
    "SegmentParams",
    "SyntheticParams",
    "TrainParams",
    "as_dict",
    "build_section",
    "choices_of",
    "fingerprint",
    "is_speed_only",
    "load_params",
    "param",
    "read_params_yaml",
    "result_dict",
    "result_fingerprint",
    "section",
    "text_fingerprint",
]


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SyntheticParams:
    """The built-in synthetic fine-grained dataset (CUB layout, with ground truth)."""

    seed: int = param(
        0, "Seed of the generator: same seed, same bytes.", interval=Interval(0, 2**31 - 1)
    )
    num_classes: int = param(
        5, "Number of classes (distinct part-attribute combinations).", interval=Interval(2, 200)
    )
    images_per_class: int = param(24, "Images generated per class.", interval=Interval(4, 10000))
    image_size: int = param(96, "Side of the square images in pixels.", interval=Interval(64, 1024))
    test_fraction: float = param(
        0.3,
        "Share of each class written as test in train_test_split.txt.",
        interval=Interval(0, 1, lo_closed=False, hi_closed=False),
    )
    distractors: int = param(
        5, "Largest number of distractor shapes per image.", interval=Interval(0, 50)
    )


@dataclass(frozen=True)
class DataParams:
    """prepare: which dataset, where, and how it is split."""

    source: str = param(
        "synthetic",
        "Dataset kind: the built-in synthetic set, CUB-200-2011, Stanford Dogs, "
        "Stanford Cars, or class folders (root/<class>/<image>).",
        choices=("synthetic", "cub", "stanford_dogs", "stanford_cars", "folder"),
    )
    root: str = param(
        "data/synthetic",
        "Dataset root. For source synthetic it must be "
        "data/synthetic, where the synthesize stage writes.",
    )
    seed: int = param(
        0,
        "Seed of the validation split (and of the folder train/test split).",
        interval=Interval(0, 2**31 - 1),
    )
    val_fraction: float = param(
        0.15,
        "Share of each class's training images moved to validation (stratified).",
        interval=Interval(0, 0.5, hi_closed=False),
    )
    test_fraction: float = param(
        0.3,
        "Share of each class held out as test; source folder only "
        "(CUB, Stanford Dogs, Stanford Cars and synthetic carry their own split).",
        interval=Interval(0, 1, lo_closed=False, hi_closed=False),
    )
    max_reject_fraction: float = param(
        0.05,
        "prepare fails when more than this share of images cannot be decoded.",
        interval=Interval(0, 1),
    )
    decode_workers: int = param(
        2, "Threads decoding images in prepare.", interval=Interval(1, 256), speed_only=True
    )
    synthetic: SyntheticParams = section(SyntheticParams, "The synthetic dataset generator.")


# ------------------------------------------------------------------------ segment
@dataclass(frozen=True)
class SamParams:
    """Segment Anything automatic mask generation (used when segment.backend is sam)."""

    model_type: str = param(
        "vit_h",
        "SAM architecture of the checkpoint (tiny: the small "
        "test model of pipeline/segmenters/tiny_sam.py).",
        choices=("vit_b", "vit_l", "vit_h", "tiny"),
    )
    checkpoint: Optional[str] = param(
        None, "Local SAM checkpoint file (e.g. sam_vit_h_4b8939.pth); nothing is ever downloaded."
    )
    points_per_side: int = param(32, "Point prompts per image side.", interval=Interval(1, 256))
    points_per_batch: Optional[int] = param(
        None,
        "Prompts decoded in one call (memory; null: 1024 on CUDA, 256 on CPU).",
        interval=Interval(1, 65536),
        speed_only=True,
    )
    pred_iou_thresh: float = param(
        0.86, "Keep masks whose predicted IoU exceeds this.", interval=Interval(0, 1)
    )
    stability_score_thresh: float = param(
        0.92, "Keep masks whose stability score is at least this.", interval=Interval(0, 1)
    )
    stability_score_offset: float = param(
        1.0, "Logit offset of the stability score.", interval=Interval(0, 100)
    )
    box_nms_thresh: float = param(
        0.7, "Box IoU of the NMS among one crop's masks.", interval=Interval(0, 1)
    )
    crop_n_layers: int = param(
        1, "Layers of image crops segmented again (0: none).", interval=Interval(0, 4)
    )
    crop_nms_thresh: float = param(0.7, "Box IoU of the NMS across crops.", interval=Interval(0, 1))
    crop_overlap_ratio: float = param(
        512 / 1500, "Overlap of neighbouring crops.", interval=Interval(0, 1, hi_closed=False)
    )
    crop_n_points_downscale_factor: int = param(
        2, "Point grid shrink per crop layer.", interval=Interval(1, 16)
    )
    min_mask_region_area: int = param(
        0, "Remove holes and islands smaller than this (px).", interval=Interval(0, 1_000_000)
    )
    images_per_batch: int = param(
        4,
        "Images whose encoder pass runs as one batch.",
        interval=Interval(1, 256),
        speed_only=True,
    )
    encoder_batch_size: Optional[int] = param(
        None,
        "Crops per image-encoder call (memory and speed only, never the masks; null: 8 on "
        "CUDA, 1 on CPU, where batching is no faster and each crop's attention holds "
        "2.4 GB (vit_b) to 3.2 GB (vit_h)). On CPU a larger value is lowered to what half "
        "of the available memory holds, with a warning.",
        interval=Interval(1, 256),
        speed_only=True,
    )
    bf16: bool = param(False, "bf16 autocast on CUDA (fp32 otherwise).")


@dataclass(frozen=True)
class ClassicalParams:
    """The scikit-image segmenter (segment.backend classical, the offline default)."""

    method: str = param("felzenszwalb", "Region algorithm.", choices=("felzenszwalb", "slic"))
    scale: float = param(
        100.0,
        "felzenszwalb scale of the finest level (x4 per level).",
        interval=Interval(0, 1e6, lo_closed=False),
    )
    sigma: float = param(0.4, "Gaussian smoothing before segmenting.", interval=Interval(0, 10))
    min_size: int = param(
        20,
        "felzenszwalb smallest region of the finest level (px, x2 per level).",
        interval=Interval(1, 1_000_000),
    )
    n_segments: int = param(
        64, "slic regions of the finest level (/4 per level).", interval=Interval(2, 100_000)
    )
    compactness: float = param(
        10.0, "slic compactness.", interval=Interval(0, 1e4, lo_closed=False)
    )
    levels: int = param(3, "Granularities segmented (finest first).", interval=Interval(1, 6))
    min_area_fraction: float = param(
        0.002, "Drop regions smaller than this share of the image.", interval=Interval(0, 1)
    )
    max_area_fraction: float = param(
        0.1,
        "Drop regions larger than this share of the image "
        "(0.1: background regions, whose boxes span the whole "
        "image, do not crowd the parts out of the views).",
        interval=Interval(0, 1),
    )
    dedup_iou: float = param(
        0.9,
        "A region found again at a coarser level (mask IoU above this) is kept once.",
        interval=Interval(0, 1),
    )
    stability_score_thresh: float = param(
        0.75,
        "Keep regions whose stability (best IoU with a "
        "region of a neighbouring level) reaches this, as "
        "SAM keeps stable masks.",
        interval=Interval(0, 1),
    )
    max_masks: int = param(
        64, "Keep at most this many masks per image (largest first).", interval=Interval(1, 10000)
    )


@dataclass(frozen=True)
class SegmentParams:
    """segment: masks for every image, in HDF5 shards."""

    backend: str = param(
        "classical",
        "Segmenter: sam (needs segment.sam.checkpoint), sam2 (needs segment.sam2.checkpoint) "
        "or the offline scikit-image one.",
        choices=("classical", "sam", "sam2"),
    )
    device: str = param(
        "auto", "auto | cpu | cuda | cuda:N (auto: every GPU if any, else CPU).", speed_only=True
    )
    shard_size: int = param(
        32,
        "Images per HDF5 shard (the unit of work and of resume).",
        interval=Interval(1, 1_000_000),
    )
    workers: int = param(
        2,
        "Local dask worker processes on CPU (one per GPU on GPUs).",
        interval=Interval(1, 1024),
        speed_only=True,
    )
    scheduler: Optional[str] = param(
        None,
        "Address of an existing dask scheduler (e.g. tcp://10.0.0.5:8786); null: a local cluster.",
        speed_only=True,
    )
    sam: SamParams = section(SamParams, "Segment Anything settings.")
    sam2: Sam2Params = section(Sam2Params, "SAM 2 settings.")
    classical: ClassicalParams = section(ClassicalParams, "Classical segmenter settings.")


# -------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class CropsParams:
    """crops: the M views of every image, cut from mask boxes."""

    num_views: int = param(
        8, "Views per image (M): the largest masks, cycled when fewer.", interval=Interval(1, 256)
    )
    size: int = param(
        64, "Side of the square crops in pixels (the paper: 224).", interval=Interval(8, 1024)
    )
    min_box_size: int = param(
        1, "Drop masks whose box is at most this many px wide or tall.", interval=Interval(0, 10000)
    )
    order: str = param(
        "area", "Which masks come first.", choices=("area", "predicted_iou", "stability_score")
    )
    fill: str = param(
        "zero",
        "Pixels outside the mask: the image itself (the reference implementation's "
        "setting), zero (the default: the clutter and distractors around a part "
        "are blanked out), or the "
        "mask's mean colour.",
        choices=("original", "zero", "mean"),
    )
    codec: str = param(
        "blosc-zstd",
        "How crop shards store the views: raw pixels behind an HDF5 filter (blosc-zstd: "
        "the default, smallest of the lossless codecs that read as fast as gzip; gzip: "
        "level 1, the format before codecs; lzf; none), each view encoded losslessly "
        "(png, webp-lossless: smaller, slower to read and write), or LOSSY (jpeg-q90, "
        "webp-q90: several times smaller; only when asked for). README: Crop storage.",
        choices=(
            "blosc-zstd",
            "gzip",
            "lzf",
            "none",
            "png",
            "webp-lossless",
            "jpeg-q90",
            "webp-q90",
        ),
    )
    workers: Optional[int] = param(
        None,
        "Local dask worker processes cutting crops (null: one per CPU core this process may "
        "use; an existing cluster named by segment.scheduler brings its own).",
        interval=Interval(1, 1024),
        speed_only=True,
    )


# -------------------------------------------------------------------------- train
@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation of the views; never applied in push or eval."""

    per: str = param(
        "image",
        "One random transform per image (all its views) or per view.",
        choices=("image", "view"),
    )
    flip: float = param(0.5, "Probability of a horizontal flip.", interval=Interval(0, 1))
    perspective: float = param(
        0.1, "Distortion scale of the random perspective (0: off).", interval=Interval(0, 1)
    )
    perspective_p: float = param(
        0.3, "Probability of the random perspective.", interval=Interval(0, 1)
    )
    rotate: float = param(15.0, "Largest rotation in degrees.", interval=Interval(0, 180))
    shear: float = param(15.0, "Largest shear in degrees.", interval=Interval(0, 89))
    brightness: float = param(0.2, "Colour jitter: brightness.", interval=Interval(0, 1))
    contrast: float = param(0.2, "Colour jitter: contrast.", interval=Interval(0, 1))
    saturation: float = param(0.2, "Colour jitter: saturation.", interval=Interval(0, 1))
    hue: float = param(
        0.0, "Colour jitter: hue (keep 0 where colour is the class).", interval=Interval(0, 0.5)
    )


@dataclass(frozen=True)
class TrainParams:
    """train: every model on the same data and trunk, each with its own section."""

    seeds: list[int] = param(
        [0, 1],
        "Training seeds: each model is trained and evaluated once per seed (the DVC matrix "
        "model x seed), and compare reports every metric as mean +- std over them; a seed "
        "sets initialisation, shuffling and augmentation. The paper's comparison: [0, 1, 2].",
        interval=Interval(0, 2**31 - 1),
        stage="compare",
    )
    device: str = param("auto", "auto | cpu | cuda | cuda:N.", speed_only=True)
    bf16: bool = param(True, "bf16 autocast on CUDA (ignored on CPU).")
    channels_last: bool = param(
        True,
        "Train in channels-last memory format (CPU and CUDA): 1.5-2x faster convolutions on a "
        "CPU (oneDNN). Float rounding differs from the default format, so DVC retrains when "
        "it changes.",
    )
    batch_size: int = param(
        16, "Images per step (each with all its views).", interval=Interval(1, 4096)
    )
    accumulate: int = param(
        1, "Gradient accumulation steps per optimiser step.", interval=Interval(1, 1024)
    )
    loader_workers: Optional[int] = param(
        None,
        "DataLoader worker processes per training process (null: the CPU cores this "
        "process may use divided by the training processes on this machine, at most 8; "
        "0: load in the main process).",
        interval=Interval(0, 64),
        speed_only=True,
    )
    model: ModelParams = section(ModelParams, "The trunk every model shares.")
    protomask: PrototypeModelParams = section(
        PrototypeModelParams, "ProtoMask: prototypes compared with segment-crop views."
    )
    protopnet: PrototypeModelParams = section(
        PrototypeModelParams,
        "The ProtoPNet baseline on full images, at its own recipe (scaled to this budget).",
        **PROTOPNET_RECIPE,
    )
    protopool: ProtoPoolParams = section(
        ProtoPoolParams, "The ProtoPool baseline on full images (the reference's settings, scaled)."
    )
    pipnet: PIPNetParams = section(
        PIPNetParams, "The PIP-Net baseline on full images (the reference's settings, scaled)."
    )
    augment: AugmentParams = section(AugmentParams, "Training augmentation.")


# ----------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class PerturbParams:
    """The perturbed copy of every test image (stability, PSC, PRC, CRC): all four steps in
    this order, as the reference's continuity pipeline (colour jitter, noise, blur, JPEG)."""

    brightness: float = param(
        1.125, "Colour jitter: brightness factor (1: unchanged).", interval=Interval(0, 10)
    )
    contrast: float = param(
        1.125, "Colour jitter: contrast factor (1: unchanged).", interval=Interval(0, 10)
    )
    saturation: float = param(
        1.125, "Colour jitter: saturation factor (1: unchanged).", interval=Interval(0, 10)
    )
    hue: float = param(
        0.0,
        "Colour jitter: hue shift in turns (the reference: 0.05; 0 here "
        "because colour names the class in the synthetic set).",
        interval=Interval(-0.5, 0.5),
    )
    noise_sigma: float = param(
        2.24,
        "Gaussian noise standard deviation in grey levels (the reference: variance 5).",
        interval=Interval(0, 255),
    )
    blur: int = param(3, "Box blur kernel side in pixels (1: none).", interval=Interval(1, 31))
    jpeg_quality: Optional[int] = param(
        90, "JPEG re-encoding quality (null: none).", interval=Interval(1, 100)
    )


@dataclass(frozen=True)
class EvaluateParams:
    """evaluate: explainability metrics and the visual report, on test."""

    device: str = param(
        "auto", "auto (the GPU if there is one), cpu, cuda or cuda:N.", speed_only=True
    )
    checkpoint: str = param(
        "best", "Which checkpoint of the train stage is evaluated.", choices=("best", "final")
    )
    saliency: str = param(
        "prp",
        "Saliency of a prototype: PRP (LRP rules, zennit) or input x gradient (plain autograd).",
        choices=("prp", "gradient"),
    )
    lrp_composite: str = param(
        "epsilon_plus_box",
        "PRP rules: ZBox first conv + ZPlus convs "
        "(the reference's), or zennit's EpsilonGammaBox / "
        "EpsilonPlusFlat.",
        choices=("epsilon_plus_box", "epsilon_gamma_box", "epsilon_plus_flat"),
    )
    top_k: int = param(
        5, "Prototypes explained per test image (the reference: 5).", interval=Interval(1, 100)
    )
    top_fraction: float = param(
        0.05,
        "Share of the saliency pixels forming the mask S (the reference: top 5 %).",
        interval=Interval(0, 1, lo_closed=False),
    )
    batch_size: int = param(
        16,
        "Test images per batch (saliency runs on twice as many rows at a time: memory).",
        interval=Interval(1, 4096),
        speed_only=True,
    )
    loader_workers: Optional[int] = param(
        None,
        "DataLoader worker processes per evaluate process preparing the inputs (decoding, "
        "the perturbed copy, the ground truth) while the model runs (null: the CPU cores "
        "this process may use divided by the evaluate processes on this machine, at most "
        "8; 0: prepare in the main process).",
        interval=Interval(0, 64),
        speed_only=True,
    )
    max_images: Optional[int] = param(
        None,
        "Evaluate only the first this many test images (null: all).",
        interval=Interval(1, 10_000_000),
    )
    sanity_images: int = param(
        16,
        "Test images of the model-randomisation check (their top-1 prototype; 0: skip).",
        interval=Interval(0, 100000),
    )
    report_prototypes: Optional[int] = param(
        10,
        "Prototypes shown in the report, round-robin over the classes (null: all).",
        interval=Interval(0, 100000),
    )
    report_images: int = param(8, "Test images shown in the report.", interval=Interval(0, 100000))
    seed: int = param(
        0,
        "Seed of the perturbation noise and of the randomised weights.",
        interval=Interval(0, 2**31 - 1),
    )
    output_completeness: bool = param(
        True,
        "Output completeness (the reference's): per test image and top prototype, Gaussian "
        "noise outside the bounding box of its S; the *_completeness changes of its "
        "saliency, activation and score (extra forwards and saliency passes).",
    )
    completeness_top_k: int = param(
        1,
        "Output completeness: the first this many of an image's top_k prototypes get a "
        "noised copy each (the reference: all 5; each costs a forward and a saliency pass "
        "per image, so 1 here).",
        interval=Interval(1, 100),
    )
    completeness_noise_std: float = param(
        0.05,
        "Output completeness: standard deviation of the noise in the normalised input "
        "(the reference: 0.05).",
        interval=Interval(0, 100),
    )
    verdict_min_test_images: int = param(
        30,
        "compare: no verdict on the paper's claim with fewer test images than this.",
        interval=Interval(1, 10_000_000),
        stage="compare",
    )
    verdict_min_seeds: int = param(
        3,
        "compare: no verdict with fewer training seeds per model "
        "than this (one seed gives no interval; two are too few runs to trust one on).",
        interval=Interval(1, 1000),
        stage="compare",
    )
    verdict_max_fallback_share: float = param(
        50.0,
        "compare: no verdict when more than this "
        "share (%) of test images has only whole-image "
        "views (no usable mask).",
        interval=Interval(0, 100),
        stage="compare",
    )
    verdict_max_abstained: float = param(
        50.0,
        "compare: no verdict when a model abstains (scores every class equally, e.g. PIP-Net "
        "with no prototype above its presence cut-off) on more than this share (%) of the "
        "test images: its accuracy is then a fixed pick, not a prediction.",
        interval=Interval(0, 100),
        stage="compare",
    )
    verdict_accuracy_margin: float = param(
        2.0,
        "compare: ProtoMask's accuracy is competitive with a baseline's when the 95 % "
        "interval of their paired difference lies above minus this many percentage points.",
        interval=Interval(0, 100),
        stage="compare",
    )
    perturb: PerturbParams = section(PerturbParams, "The perturbed copy of each test image.")


@dataclass(frozen=True)
class Params:
    """The whole params.yaml, one section per stage."""

    data: DataParams = section(DataParams, "Dataset and splits (synthesize, prepare).")
    segment: SegmentParams = section(SegmentParams, "Masks (segment).")
    crops: CropsParams = section(CropsParams, "Views from mask boxes (crops).")
    train: TrainParams = section(TrainParams, "Training both models (train).")
    evaluate: EvaluateParams = section(
        EvaluateParams, "Explainability metrics and report (evaluate, compare)."
    )

    def check(self) -> None:
        """Rules that tie several keys together (relative paths: from the project root)."""
        check_path_length("data.root", self.data.root)
        if self.data.source == "synthetic" and Path(self.data.root) != SYNTHETIC_ROOT:
            raise ParamsError(
                f"data.root must be {SYNTHETIC_ROOT} when data.source is synthetic, "
                f"got {self.data.root!r}"
            )
        if self.data.source != "synthetic" and within(self.data.root, SYNTHETIC_ROOT):
            raise ParamsError(
                f"data.root {self.data.root!r} lies in {SYNTHETIC_ROOT}, which the "
                f"synthesize stage replaces when data.source is "
                f"{self.data.source}: move your dataset elsewhere and point "
                "data.root at it"
            )
        if self.data.source == "folder" and within(SYNTHETIC_ROOT, self.data.root):
            raise ParamsError(
                f"data.root {self.data.root!r} holds {SYNTHETIC_ROOT}, which the "
                "synthesize stage writes and the folder reader would take for a "
                "class: put your class folders in a folder of their own"
            )
        for key, value in (
            ("segment.device", self.segment.device),
            ("train.device", self.train.device),
            ("evaluate.device", self.evaluate.device),
        ):
            if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
                raise ParamsError(f"{key} must be one of auto | cpu | cuda | cuda:N, got {value!r}")
        if self.segment.backend == "sam" and not self.segment.sam.checkpoint:
            raise ParamsError(
                "segment.sam.checkpoint must name a local SAM checkpoint file "
                "when segment.backend is sam, got null"
            )
        if self.segment.backend == "sam2" and not self.segment.sam2.checkpoint:
            raise ParamsError(
                "segment.sam2.checkpoint must name a local SAM 2 checkpoint file "
                "when segment.backend is sam2, got null"
            )


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


if __name__ == "__main__":
    import sys

    from pipeline.param_docs import main

    main(sys.argv[1:])
