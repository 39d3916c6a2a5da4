"""The evaluate stage's work: the whole metric suite (README: Metrics) on the test split, for one model.

One pass over the test images, in batches of ``evaluate.batch_size``:

1. the clean input (ProtoMask: the stored views; ProtoPNet: the image at
   ``baseline_image_size``) and a perturbed copy (:func:`perturb_image` on the decoded
   image, then cut into the same view boxes / resized the same way) go through the model;
2. per image the top-k prototypes by similarity; their saliency (:mod:`model.saliency`:
   PRP or input x gradient) on the clean and the perturbed input, one batched call, put on
   the image canvas (ProtoMask: the matched view's map pasted into its box; ProtoPNet: the
   map resized from the square input to the image; plus, for ProtoPNet only, the classic
   upsampled similarity map as a second method, ``upsampled.*`` keys);
3. per image and method, S (top ``evaluate.top_fraction`` pixels) and the per-item metrics
   of :mod:`model.metrics` against the ground truth of the images index (object
   segmentation G, part keypoints); only these small arrays are kept, never the maps.

Then the scalars: class-balanced accuracy, top-3, macro F1, global size, sparsity, NPR,
VLC, intra/inter PD, object/background overlap, IOR, consistency, stability, PSC, PRC,
CRC, pointing game, the segmenter's mask consistency (from the mask shards: the masks the
test images' views were cut from) and the model-randomisation sanity check (saliency of
the trained model vs the same model with a re-initialised trunk, on the first
``evaluate.sanity_images`` test images' top-1 prototype; Spearman correlation of the
input-level maps, verdict ``passed`` when its mean is below 0.5).

Keys of metrics/evaluate/<model>.json (means over test images; x100 for percentages):
``accuracy``, ``top3_accuracy``, ``macro_f1`` (class-balanced, %), ``global_size``,
``sparsity`` (%), ``npr``, ``intra_pd``, ``inter_pd`` (1 - cosine), ``psc`` (%), ``prc``
(ranks), ``crc`` (rank of the original top-1 class), ``mask_consistency`` (%), and per
saliency method ``vlc`` (%), ``object_overlap``, ``background_overlap`` (%), ``ior``
([-1, 1]), ``pointing_game`` (% of positive saliency energy inside G), ``pointing_hit`` (%
of maps whose maximum lies in G), ``consistency``, ``stability`` (%), ``empty_saliency``
(% of maps without any positive pixel, left out of the S-based means) and
``randomisation`` {``spearman`` (trained vs randomised trunk, mean over pairs),
``spearman_abs``, ``top_mask_iou``, ``pairs``, ``passed`` (spearman < 0.5)}. ProtoPNet's
upsampled similarity maps repeat the per-method keys under ``upsampled``. Also
``model``, ``checkpoint``, ``saliency``, ``lrp_composite``, ``test_images``, ``top_k``.

Ground truth: a metric whose ground truth the dataset lacks entirely is
``{"absent": reason}``; an image without it is left out of that metric's mean. Stability
leaves out pairs where neither S nor S' holds a part (the reference's convention).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from model.checkpoint import load_checkpoint, restore
from model.metrics import (Absent, background_overlap, balanced_accuracy, consistency, crc,
                           global_size, inter_pd, intra_pd, ior, macro_f1, mask_consistency,
                           mask_part_codes, mean_of, npr, object_overlap, parts_arrays,
                           parts_in_masks, pointing_energy, pointing_hit, prc, psc,
                           randomisation_verdict, sparsity, spearman, stability, to_jsonable,
                           top_fraction_mask, top_k_accuracy, top_k_indices, top_mask_iou, vlc)
from model.metrics.prototypes import NO_PARTS
from model.metrics.saliency import NO_SEGMENTATION
from model.saliency import (PrototypeSimilarity, paste_back, prototype_saliency,
                            randomised_copy, resize_maps, upsampled_similarity)
from model.training import MODELS, build_model, resolve_device
from pipeline import layout
from pipeline.atomic import atomic_file
from pipeline.crop_shards import CropShard
from pipeline.errors import ArtifactError, ParamsError
from pipeline.imageio import load_rgb, read_mask_png, resolve_inside
from pipeline.mask_shards import MaskShard
from pipeline.params import EvaluateParams, Params, PerturbParams, TrainParams, build_section
from pipeline.run_log import write_run_log
from pipeline.tables import read_table
from pipeline.view_datasets import FullImageDataset, ViewDataset, normalise
from pipeline.views import cut_view, decode_masks, resize_square

RANDOMISATION_THRESHOLD = 0.5
SALIENCY_KEYS = ("vlc", "object_overlap", "background_overlap", "ior", "pointing_game",
                 "pointing_hit", "consistency", "stability", "empty_saliency")
MODEL_KEYS = ("accuracy", "top3_accuracy", "macro_f1", "global_size", "sparsity", "npr",
              "intra_pd", "inter_pd", "psc", "prc", "crc", "mask_consistency")
METRIC_KEYS = MODEL_KEYS + SALIENCY_KEYS + ("randomisation",)


# ------------------------------------------------------------------------ test data
@dataclass
class TestSet:
    """The evaluated test images (sorted by image_id) with ground truth and view boxes."""

    image_ids: np.ndarray            # (N,)
    labels: np.ndarray               # (N,)
    paths: list[str]
    sizes: np.ndarray                # (N, 2) height, width
    segmentation: list[Optional[str]]
    part_xy: Optional[np.ndarray]    # (N, Q, 2) or None (no keypoints at all)
    part_visible: Optional[np.ndarray]
    has_parts: np.ndarray            # (N,) bool
    boxes: np.ndarray                # (N, M, 4) inclusive x0, y0, x1, y1
    mask_index: np.ndarray           # (N, M)
    crop_shards: list[str]
    class_names: list[str]
    part_names: Optional[list[str]]


def load_test_set(project_root: Path, image_ids: np.ndarray) -> TestSet:
    """Ground truth and view boxes of ``image_ids`` from the images and crops indexes."""
    images, info = read_table(project_root / layout.IMAGES_INDEX, "images")
    rows = {r["image_id"]: r for r in images.to_pylist()}
    crops, _ = read_table(project_root / layout.CROPS_INDEX, "crops")
    crops = crops.filter(pc.is_in(crops["image_id"], pa_array(image_ids))).sort_by(
        [("image_id", "ascending"), ("view", "ascending")])
    m = int(len(crops) // max(len(image_ids), 1))
    boxes = np.asarray(crops["box"].to_pylist(), np.int64).reshape(len(image_ids), m, 4)
    mask_index = crops["mask_index"].to_numpy().reshape(len(image_ids), m)
    shards = crops["shard"].to_pylist()[::m] if m else []
    picked = [rows[int(i)] for i in image_ids]
    part_names = info["facts"].get("part_names")
    part_rows = [r["parts"] for r in picked]
    if any(p is not None for p in part_rows):
        q = len(part_names) if part_names else max(int(p["part_id"]) for ps in part_rows
                                                   if ps for p in ps)
        xy, vis, has = parts_arrays(part_rows, q)
    else:
        xy = vis = None
        has = np.zeros(len(picked), bool)
    return TestSet(
        image_ids=np.asarray(image_ids), labels=np.asarray([r["class_id"] for r in picked]),
        paths=[r["path"] for r in picked],
        sizes=np.asarray([(r["height"], r["width"]) for r in picked], np.int64).reshape(-1, 2),
        segmentation=[r["segmentation_path"] for r in picked], part_xy=xy, part_visible=vis,
        has_parts=has, boxes=boxes, mask_index=mask_index, crop_shards=shards,
        class_names=list(info["facts"]["class_names"]), part_names=part_names)


def pa_array(values: np.ndarray):
    import pyarrow as pa
    return pa.array(np.asarray(values, np.int64))


# ---------------------------------------------------------------------- perturbation
def perturb_image(rgb: np.ndarray, p: PerturbParams, seed: int) -> np.ndarray:
    """The perturbed copy of an H x W x 3 uint8 image: colour jitter (fixed factors), Gaussian
    noise (``noise_sigma`` grey levels, seeded), box blur, JPEG re-encoding, in this order."""
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    if p.brightness != 1:
        t = TF.adjust_brightness(t, p.brightness)
    if p.contrast != 1:
        t = TF.adjust_contrast(t, p.contrast)
    if p.saturation != 1:
        t = TF.adjust_saturation(t, p.saturation)
    if p.hue != 0:
        t = TF.adjust_hue(t, p.hue)
    out = t.permute(1, 2, 0).numpy().astype(np.float64)
    if p.noise_sigma > 0:
        out = out + np.random.default_rng(seed).normal(0.0, p.noise_sigma, out.shape)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if p.blur > 1:
        out = cv2.blur(out, (p.blur, p.blur))
    if p.jpeg_quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(p.jpeg_quality))
        out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- model
def load_model(project_root: Path, kind: str, which: str, num_classes: int,
               device: torch.device) -> tuple[nn.Module, TrainParams]:
    """The trained network from artifacts/train/<kind>/<which>/checkpoint.pt, built with the
    train params stored in the checkpoint (trunk weights come from the checkpoint)."""
    path = project_root / layout.TRAIN_DIR / kind / which / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    if not ckpt.pushed:
        raise ArtifactError(f"{path}: its prototypes were never pushed onto training "
                            f"{'views' if kind == 'protomask' else 'patches'}, so its "
                            f"explanations would not show real regions; rerun train")
    try:
        train = build_section(TrainParams, ckpt.params.get("train", {}), "train.")
    except ParamsError as exc:
        raise ArtifactError(f"{path}: its train params are not readable ({exc})") from None
    from dataclasses import replace
    train = replace(train, model=replace(train.model, weights="none"))
    model = build_model(kind, train, num_classes)
    restore(ckpt, model=model, rng=False)
    model = model.to(device, memory_format=torch.channels_last).eval()
    model.channels_last = True
    return model, train


# ---------------------------------------------------------------------------- inputs
class Inputs:
    """Clean and perturbed model inputs of test images, and their decoded pixels."""

    def __init__(self, kind: str, project_root: Path, params: Params, train: TrainParams,
                 test_ids: Optional[np.ndarray] = None) -> None:
        self.kind = kind
        self.root = project_root
        self.data_root = project_root / params.data.root
        crops_dir = project_root / layout.CROPS_DIR
        if kind == "protomask":
            self.dataset = ViewDataset(crops_dir, "test")
        else:
            self.dataset = FullImageDataset(
                crops_dir, "test", size=train.model.baseline_image_size, data_root=self.data_root,
                images_index=project_root / layout.IMAGES_INDEX)
        self.size = self.dataset.size if kind == "protomask" else self.dataset.out_size
        self.fill = "original"
        if len(self.dataset):
            with CropShard(crops_dir / str(self.dataset.shard_names[0])) as shard:
                self.fill = shard.fill
        self.crops_dir = crops_dir

    def raw(self, index: int) -> Tensor:
        """uint8 (M, 3, S, S) views or (3, s, s) image as the model sees it (index in dataset)."""
        if self.kind == "protomask":
            return self.dataset.raw_views(index)
        return self.dataset.raw_image(index)

    def perturbed(self, rgb: np.ndarray, test: TestSet, i: int) -> Tensor:
        """uint8 input of the perturbed image ``rgb`` of test row ``i``."""
        if self.kind == "protopnet":
            return torch.from_numpy(resize_square(rgb, self.size)).permute(2, 0, 1)
        masks = self._masks(test, i) if self.fill != "original" else None
        views = [cut_view(rgb, box, self.size,
                          mask=None if masks is None else masks[v], fill=self.fill)
                 for v, box in enumerate(test.boxes[i])]
        return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2)

    def _masks(self, test: TestSet, i: int) -> list[Optional[np.ndarray]]:
        shard = _mask_shard_path(self.root, self.crops_dir, test.crop_shards[i])
        with MaskShard(shard) as ms:
            masks = ms.masks(int(test.image_ids[i]))
        out = []
        for k in test.mask_index[i]:
            out.append(None if k < 0 else decode_masks(masks.height, masks.width,
                                                       [masks.rles[int(k)]])[0])
        return out


def _mask_shard_path(project_root: Path, crops_dir: Path, crop_shard: str) -> Path:
    with CropShard(crops_dir / crop_shard) as shard:
        return project_root / layout.SEGMENT_DIR / shard.mask_shard


def load_image(data_root: Path, path: str) -> np.ndarray:
    return load_rgb(resolve_inside(data_root, path))


def load_segmentation(data_root: Path, path: Optional[str], height: int, width: int
                      ) -> Optional[np.ndarray]:
    """G as (H, W) bool, resized (nearest) to the image if its size differs; None if absent."""
    if not path:
        return None
    g = read_mask_png(resolve_inside(data_root, path))
    if g.shape != (height, width):
        g = cv2.resize(g.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    return g


# ------------------------------------------------------------------- per-map metrics
@dataclass
class MapStats:
    """Per-item metric values of one saliency method, gathered image by image."""

    top_fraction: float
    vlc: list = field(default_factory=list)
    obj: list = field(default_factory=list)
    bg: list = field(default_factory=list)
    ior: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    hit: list = field(default_factory=list)
    hits: list = field(default_factory=list)          # (K, Q) per image with parts
    hits_p: list = field(default_factory=list)
    hit_ids: list = field(default_factory=list)       # (K,) ids of those images
    empty: list = field(default_factory=list)
    any_g: bool = False

    def add(self, maps: Tensor, maps_p: Tensor, ids: np.ndarray, g: Optional[np.ndarray],
            xy: Optional[np.ndarray], vis: Optional[np.ndarray]) -> None:
        """maps, maps_p (K, H, W) of one image (clean, perturbed), ids (K,)."""
        s = top_fraction_mask(maps, self.top_fraction)
        s_p = top_fraction_mask(maps_p, self.top_fraction)
        k = maps.shape[0]
        self.vlc.append(vlc(s[None]))
        self.empty.append(100.0 * (s.flatten(1).sum(1) == 0).double().cpu().numpy())
        if g is not None:
            self.any_g = True
            gt = torch.from_numpy(g).to(maps.device)[None]
            self.obj.append(object_overlap(s[None], gt).ravel())
            self.bg.append(background_overlap(s[None], gt).ravel())
            self.ior.append(ior(maps[None], gt, s[None]).ravel())
            self.energy.append(pointing_energy(maps[None], gt).ravel())
            self.hit.append(pointing_hit(maps[None], gt).ravel())
        else:
            for name in ("obj", "bg", "ior", "energy", "hit"):
                getattr(self, name).append(np.full(k, np.nan))
        if xy is not None:
            self.hits.append(parts_in_masks(s[None], xy[None], vis[None])[0].cpu())
            self.hits_p.append(parts_in_masks(s_p[None], xy[None], vis[None])[0].cpu())
            self.hit_ids.append(np.asarray(ids))

    def results(self, num_prototypes: int, parts_known: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"vlc": mean_of(self.vlc, "no image with two or more maps")}
        seg = None if self.any_g else Absent(NO_SEGMENTATION)
        for key, values in (("object_overlap", self.obj), ("background_overlap", self.bg),
                            ("ior", self.ior), ("pointing_game", self.energy),
                            ("pointing_hit", self.hit)):
            out[key] = seg if seg is not None else mean_of(values)
        if not parts_known or not self.hits:
            out["consistency"] = Absent(NO_PARTS)
            out["stability"] = Absent(NO_PARTS)
        else:
            ids = np.stack(self.hit_ids)
            hits, hits_p = torch.stack(self.hits), torch.stack(self.hits_p)
            out["consistency"] = consistency(ids, hits, num_prototypes)
            out["stability"] = mean_of(stability(hits, hits_p, empty_value=float("nan")),
                                       "no part in any S or S'")
        out["empty_saliency"] = mean_of(self.empty)
        return out


# ------------------------------------------------------------------------ evaluation
@dataclass
class Evaluation:
    """What the report needs besides the metrics."""

    kind: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    report: Any


def _mean_json(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (_mean_json(v) if isinstance(v, dict) else
                v if isinstance(v, (bool, int, str)) or v is None else to_jsonable(v))
            for k, v in values.items()}


def run_evaluation(params: Params, kind: str, project_root: Path = Path("."),
                   write: bool = True) -> Evaluation:
    """Evaluate ``kind`` on the test split; write metrics/evaluate/<kind>.json and the
    report folder artifacts/evaluate/<kind>/ (when ``write``)."""
    from model.report import ReportBuilder

    if kind not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {kind!r}")
    ev = params.evaluate
    started = time.perf_counter()
    timings: dict[str, float] = {}
    device = _device(ev)
    images_info = read_table(project_root / layout.IMAGES_INDEX, "images")[1]
    num_classes = len(images_info["facts"]["class_names"])
    model, train = load_model(project_root, kind, ev.checkpoint, num_classes, device)
    head = model.head
    explainer = PrototypeSimilarity(model.trunk, model.add_on, pooled=kind == "protomask")
    inputs = Inputs(kind, project_root, params, train)
    n = len(inputs.dataset) if ev.max_images is None else min(ev.max_images, len(inputs.dataset))
    if n == 0:
        raise ArtifactError(f"{project_root / layout.CROPS_INDEX}: the test split is empty")
    test = load_test_set(project_root, inputs.dataset.image_ids[:n])
    num_p = head.num_prototypes
    k = min(ev.top_k, num_p)
    methods = [ev.saliency] + (["upsampled"] if kind == "protopnet" else [])
    stats = {m: MapStats(ev.top_fraction) for m in methods}
    sims, sims_p, logits, logits_p, top_ids, matched = [], [], [], [], [], []
    sanity_rows: list[tuple[Tensor, Tensor, Tensor, Optional[Tensor]]] = []
    report = ReportBuilder(kind, test, ev, inputs.size)
    sample_rows = set(report.sample_rows(n))
    timings["load"] = time.perf_counter() - started

    t_forward = t_saliency = t_metrics = 0.0
    for start in range(0, n, ev.batch_size):
        rows = list(range(start, min(n, start + ev.batch_size)))
        t0 = time.perf_counter()
        rgbs = [load_image(inputs.data_root, test.paths[i]) for i in rows]
        clean = torch.stack([inputs.raw(i) for i in rows])
        pert = torch.stack([inputs.perturbed(perturb_image(rgb, ev.perturb, ev.seed * 1_000_003
                                                           + int(test.image_ids[i])), test, i)
                            for rgb, i in zip(rgbs, rows)])
        x, xp = normalise(clean).to(device), normalise(pert).to(device)
        with torch.no_grad():
            out, out_p = model(x), model(xp)
        sim, sim_p = head.similarity(out.min_distances), head.similarity(out_p.min_distances)
        ids = top_k_indices(sim, k)                                     # (B, K)
        sims.append(sim.cpu())
        sims_p.append(sim_p.cpu())
        logits.append(out.logits.float().cpu())
        logits_p.append(out_p.logits.float().cpu())
        top_ids.append(ids.cpu())
        matched.append(out.matched.cpu())
        if kind == "protopnet":
            report.grid = tuple(out.distances.shape[-2:])
        t1 = time.perf_counter()
        t_forward += t1 - t0

        # saliency of every (image, top-k prototype) pair, clean and perturbed, one call
        b = len(rows)
        protos = head.prototypes.detach()[ids].reshape(b * k, -1)
        if kind == "protomask":
            m_clean = out.matched.gather(1, ids)                        # (B, K) view index
            m_pert = out_p.matched.gather(1, ids)
            bi = torch.arange(b, device=device)[:, None].expand(b, k)
            rows_in = torch.cat([x[bi, m_clean].flatten(0, 1), xp[bi, m_pert].flatten(0, 1)])
        else:
            m_clean = m_pert = None
            rows_in = torch.cat([x.repeat_interleave(k, 0), xp.repeat_interleave(k, 0)])
        maps_in, _ = prototype_saliency(explainer, rows_in, torch.cat([protos, protos]),
                                        method=ev.saliency, composite=ev.lrp_composite,
                                        batch_size=2 * ev.batch_size)
        maps_in = _finite(maps_in)
        maps_in = maps_in.reshape(2, b, k, *maps_in.shape[-2:])
        t2 = time.perf_counter()
        t_saliency += t2 - t1

        for j, i in enumerate(rows):
            h, w = (int(v) for v in test.sizes[i])
            canv = {}
            if kind == "protomask":
                boxes = torch.as_tensor(test.boxes[i])
                canv[ev.saliency] = (paste_back(maps_in[0, j], boxes[m_clean[j].cpu()], h, w),
                                     paste_back(maps_in[1, j], boxes[m_pert[j].cpu()], h, w))
            else:
                canv[ev.saliency] = (resize_maps(maps_in[0, j], h, w),
                                     resize_maps(maps_in[1, j], h, w))
                canv["upsampled"] = (
                    upsampled_similarity(out.distances[j, ids[j]], h, w),
                    upsampled_similarity(out_p.distances[j, ids[j]], h, w))
            g = load_segmentation(inputs.data_root, test.segmentation[i], h, w)
            xy = vis = None
            if test.part_xy is not None and test.has_parts[i]:
                xy, vis = test.part_xy[i], test.part_visible[i]
            for method, (mc, mp) in canv.items():
                stats[method].add(mc, mp, ids[j].cpu().numpy(), g, xy, vis)
            if i in sample_rows:
                report.add_sample(i, rgbs[j], ids[j].cpu(), sim[j].cpu(),
                                  out.logits[j].float().cpu(),
                                  None if m_clean is None else m_clean[j].cpu(),
                                  {m: c[0].cpu() for m, c in canv.items()}, g)
        if len(sanity_rows) < ev.sanity_images:
            for j in range(b):
                if len(sanity_rows) >= ev.sanity_images:
                    break
                dist = None if kind == "protomask" else out.distances[j, ids[j, 0]].cpu()
                sanity_rows.append((rows_in[j * k].cpu(), protos[j * k].cpu(),
                                    maps_in[0, j, 0].cpu(), dist))
        t_metrics += time.perf_counter() - t2

    timings.update(forward=t_forward, saliency=t_saliency, metrics=t_metrics)
    sim_all, sim_p_all = torch.cat(sims), torch.cat(sims_p)
    logit_all, logit_p_all = torch.cat(logits), torch.cat(logits_p)
    ids_all = torch.cat(top_ids)
    matched_all = torch.cat(matched)
    labels = torch.as_tensor(test.labels)

    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    pred = logit_all.argmax(1)
    metrics["accuracy"] = balanced_accuracy(labels, pred, num_classes)
    metrics["top3_accuracy"] = top_k_accuracy(labels, logit_all, min(3, num_classes))
    metrics["macro_f1"] = macro_f1(labels, pred, num_classes)
    weight = head.last_layer.weight.detach().cpu()
    metrics["global_size"] = float(global_size(weight))
    metrics["sparsity"] = sparsity(weight)
    metrics["npr"] = npr(weight)
    vectors = head.prototypes.detach().cpu()[ids_all]
    metrics["intra_pd"] = mean_of(intra_pd(vectors), "fewer than two prototypes per image")
    metrics["inter_pd"] = inter_pd(vectors, labels)
    metrics["psc"] = mean_of(psc(sim_all, sim_p_all, ids_all))
    metrics["prc"] = mean_of(prc(sim_all, sim_p_all, ids_all))
    metrics["crc"] = mean_of(crc(logit_all, logit_p_all))
    metrics["mask_consistency"] = segmenter_consistency(project_root, test)
    parts_known = test.part_xy is not None and bool(test.has_parts.any())
    per_method = {m: s.results(num_p, parts_known) for m, s in stats.items()}
    metrics.update(per_method[ev.saliency])
    timings["scalars"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sanity = randomisation_check(model, kind, sanity_rows, ev, device)
    metrics["randomisation"] = sanity[ev.saliency]
    if kind == "protopnet":
        upsampled = dict(per_method["upsampled"])
        upsampled["randomisation"] = sanity["upsampled"]
        metrics["upsampled"] = upsampled
    timings["randomisation"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report.add_prototypes(explainer, head, inputs, sim_all, matched_all, device, project_root)
    timings["report_saliency"] = time.perf_counter() - t0

    doc = {"model": kind, "checkpoint": ev.checkpoint, "saliency": ev.saliency,
           "lrp_composite": ev.lrp_composite if ev.saliency == "prp" else None,
           "test_images": int(n), "seeds": 1,
           "fallback_share": fallback_share(project_root, test.image_ids),
           "top_k": int(k), **_mean_json(metrics)}
    timings["total"] = time.perf_counter() - started
    result = Evaluation(kind, doc, {key: round(v, 2) for key, v in timings.items()}, report)
    if write:
        write_outputs(result, project_root)
        timings["total_with_report"] = time.perf_counter() - started
        result.timings = {key: round(v, 2) for key, v in timings.items()}
        write_run_log(project_root, f"evaluate-{kind}", result.timings)
    return result


def fallback_share(project_root: Path, image_ids: np.ndarray) -> float:
    """Share of these images (in %) whose views are all the whole image (no usable mask)."""
    table = read_table(project_root / layout.CROPS_INDEX, "crops")[0]
    first = table.filter(pc.equal(table["view"], 0))
    chosen = pc.is_in(first["image_id"], value_set=pa_array(np.asarray(image_ids, np.int64)))
    flags = first.filter(chosen)["fallback"].to_numpy(zero_copy_only=False)
    return round(100.0 * float(flags.mean()), 2) if len(flags) else 0.0


def _finite(maps: Tensor) -> Tensor:
    """Maps with non-finite values (an unstable LRP rule) zeroed rather than crashing."""
    return torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)


def _device(ev: EvaluateParams) -> torch.device:
    return resolve_device(ev.device, "evaluate.device")


# ------------------------------------------------------------------ randomisation check
def randomisation_check(model: nn.Module, kind: str, rows: list, ev: EvaluateParams,
                        device: torch.device) -> dict[str, dict]:
    """Trained vs trunk-randomised saliency of the same (input, prototype) pairs."""
    methods = [ev.saliency] + (["upsampled"] if kind == "protopnet" else [])
    if not rows:
        absent = Absent("evaluate.sanity_images is 0")
        return {m: {"spearman": absent, "passed": None} for m in methods}
    inputs = torch.stack([r[0] for r in rows]).to(device)
    protos = torch.stack([r[1] for r in rows]).to(device)
    trained = torch.stack([r[2] for r in rows])
    random_model = randomised_copy(model, ev.seed).eval()
    explainer = PrototypeSimilarity(random_model.trunk, random_model.add_on,
                                    pooled=kind == "protomask")
    rand, _ = prototype_saliency(explainer, inputs, protos, method=ev.saliency,
                                 composite=ev.lrp_composite, batch_size=len(rows))
    out = {ev.saliency: _similarity_report(trained, _finite(rand).cpu())}
    if kind == "protopnet":
        h, w = inputs.shape[-2:]
        trained_up = upsampled_similarity(torch.stack([r[3] for r in rows]), h, w)
        with torch.no_grad():
            f = random_model.features(inputs)
            pv = protos.reshape(len(rows), -1, 1, 1)
            d = ((f - pv) ** 2).sum(1)
        out["upsampled"] = _similarity_report(trained_up, upsampled_similarity(d.cpu(), h, w))
    return out


def _similarity_report(a: Tensor, b: Tensor) -> dict[str, Any]:
    rho = spearman(a, b)
    verdict = randomisation_verdict(rho, RANDOMISATION_THRESHOLD)
    return {"spearman": verdict["mean_similarity"],
            "spearman_abs": mean_of(spearman(a, b, absolute=True), "constant maps"),
            "top_mask_iou": mean_of(top_mask_iou(a, b), "no positive saliency"),
            "pairs": verdict["pairs"], "passed": verdict["passed"]}


# -------------------------------------------------------------------- mask consistency
def segmenter_consistency(project_root: Path, test: TestSet):
    """Mask consistency of the masks the test images' views were cut from (distinct masks;
    a fallback view counts as the whole image)."""
    if test.part_xy is None or not test.has_parts.any():
        return Absent(NO_PARTS)
    crops_dir = project_root / layout.CROPS_DIR
    codes, labels = [], []
    by_shard: dict[str, list[int]] = {}
    for i, shard in enumerate(test.crop_shards):
        if test.has_parts[i]:
            by_shard.setdefault(shard, []).append(i)
    for shard, rows in sorted(by_shard.items()):
        path = _mask_shard_path(project_root, crops_dir, shard)
        if not path.is_file():
            return Absent(f"mask shard {path.name} not found (run segment)")
        with MaskShard(path) as ms:
            for i in rows:
                masks = ms.masks(int(test.image_ids[i]))
                h, w = int(test.sizes[i][0]), int(test.sizes[i][1])
                chosen = sorted({int(v) for v in test.mask_index[i]})
                decoded = []
                if any(v < 0 for v in chosen):
                    decoded.append(np.ones((1, h, w), bool))
                keep = [v for v in chosen if v >= 0]
                if keep:
                    decoded.append(decode_masks(masks.height, masks.width,
                                                [masks.rles[v] for v in keep]))
                stack = np.concatenate(decoded) if decoded else np.zeros((0, h, w), bool)
                codes.append(mask_part_codes(stack, test.part_xy[i], test.part_visible[i]))
                labels.append(int(test.labels[i]))
    return mask_consistency(codes, np.asarray(labels))


# ---------------------------------------------------------------------------- outputs
def write_outputs(result: Evaluation, project_root: Path) -> None:
    """metrics/evaluate/<kind>.json, and the report folder (index.html, PNGs, metrics.json)."""
    out_dir = project_root / layout.evaluate_dir(result.kind)
    result.report.write(out_dir, result.metrics)
    _write_json(out_dir / "metrics.json", result.metrics)
    _write_json(project_root / layout.evaluate_metrics(result.kind), result.metrics)


def _write_json(path: Path, obj: object) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
