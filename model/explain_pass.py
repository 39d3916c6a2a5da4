"""One pass over the test images, in batches of ``evaluate.batch_size``.

What differs per model kind comes from :data:`pipeline.model_inputs.KINDS` (through
:mod:`model.model_kinds`):

1. :func:`forward_batch`: the clean input (views: the stored views; full image: the image
   at ``baseline_image_size``) and a perturbed copy (:func:`perturb_image` on the decoded
   image, then cut into the same views / resized the same way) go through the model; per
   image the top-k prototypes by their score (:func:`model.model_kinds.similarities`: the
   similarity of the best match, PIP-Net's pooled presence).
2. :func:`batch_saliency`: their saliency (PRP or input x gradient) on the clean and the
   perturbed input, in one batched call.
3. :func:`score_batch`: the maps put on the image canvas (views: the matched view's map
   pasted into its box; full image: the map resized to the image, plus, with a native
   map, the upsampled similarity / presence map as a second method ``upsampled``) and
   reduced to per-item metrics (:class:`MapStats`) against the ground truth; the
   report's samples and the sanity check's pairs kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from model.map_stats import ActivationStats, MapStats
from model.metrics import box_mask, top_k_indices
from model.model_kinds import native_maps, similarities, upsampled_native
from model.randomisation import SanityRow, finite
from model.report import ReportBuilder
from model.saliency import paste_back, prototype_saliency, resize_maps
from model.scalars import Scores
from model.timing import Timer
from pipeline.evaluation_set import TestSet, load_image, load_segmentation
from pipeline.model_inputs import ModelInputs, ModelKind, model_kind
from pipeline.params import EvaluateParams
from pipeline.perturbation import perturb_image, perturbation_seed
from pipeline.progress import Progress, get_logger, track
from pipeline.view_datasets import normalise

log = get_logger("evaluate")


@dataclass
class EvalRun:
    """What one evaluation works with: the model, its inputs, the test set, the report."""

    kind: str
    ev: EvaluateParams
    device: torch.device
    model: nn.Module  # model.model_kinds.explained_model's interface
    explainer: nn.Module  # model.model_kinds.make_explainer
    inputs: ModelInputs
    test: TestSet
    num_classes: int
    k: int  # prototypes explained per image
    report: ReportBuilder

    @property
    def spec(self) -> ModelKind:
        """The kind's entry of :data:`pipeline.model_inputs.KINDS`."""
        return model_kind(self.kind)

    @property
    def methods(self) -> list[str]:
        """The saliency methods scored: evaluate.saliency, and ``upsampled`` (native maps)."""
        return self.spec.methods(self.ev.saliency)


@dataclass
class Batch:
    """One batch of test rows through the model, clean and perturbed."""

    rows: list[int]
    rgbs: list[np.ndarray]  # the decoded clean images
    x: Tensor  # normalised clean input (on the device)
    xp: Tensor  # normalised perturbed input
    out: Any  # the model's outputs on x
    out_p: Any  # ... on xp
    sim: Tensor  # (B, P) similarities (PIP-Net: pooled presence)
    sim_p: Tensor
    ids: Tensor  # (B, K) top-k prototypes


@dataclass
class BatchMaps:
    """Input-level saliency of every (image, top-k prototype) pair of a batch."""

    rows_in: Tensor  # (2 B K, ...) the inputs explained, clean then perturbed
    protos: Tensor  # (B K, D) their prototypes (PIP-Net: one-hot rows)
    maps: Tensor  # (2, B, K, h, w) clean, perturbed
    m_clean: Optional[Tensor]  # ProtoMask: (B, K) the view each prototype matched
    m_pert: Optional[Tensor]


@dataclass
class PassResults:
    """What the pass keeps: the model's outputs, per-item metrics, sanity pairs."""

    stats: dict[str, MapStats]
    parts: dict[str, list[Tensor]] = field(
        default_factory=lambda: {
            name: [] for name in ("sim", "sim_p", "logits", "logits_p", "top_ids", "matched")
        }
    )
    sanity: list[SanityRow] = field(default_factory=list)
    activation: ActivationStats = field(default_factory=ActivationStats)

    def add(self, batch: Batch) -> None:
        """Keep a batch's similarities, logits, top-k ids and matched views (CPU)."""
        for name, value in (
            ("sim", batch.sim),
            ("sim_p", batch.sim_p),
            ("logits", batch.out.logits.float()),
            ("logits_p", batch.out_p.logits.float()),
            ("top_ids", batch.ids),
            ("matched", batch.out.matched),
        ):
            self.parts[name].append(value.cpu())

    def scores(self) -> Scores:
        """The kept outputs of every batch, concatenated."""
        joined = {name: torch.cat(values) for name, values in self.parts.items()}
        return Scores(**joined, activation=self.activation.results())


def explain_test_set(run: EvalRun, timer: Timer) -> PassResults:
    """The pass over every test image (timed as forward, saliency and metrics).

    Args:
        run: the evaluation.
        timer: takes the seconds of each step.

    Returns:
        The kept outputs, per-item metrics and sanity pairs.
    """
    ev, n = run.ev, len(run.test.image_ids)
    results = PassResults({m: MapStats(ev.top_fraction) for m in run.methods})
    samples = set(run.report.sample_rows(n))
    starts = range(0, n, ev.batch_size)
    desc = f"evaluate {run.kind} seed {run.report.seed}: saliency"
    bar = Progress(desc, len(starts), "batch", logger=log, every=0.25, leave=False)
    for start in track(starts, bar):
        rows = list(range(start, min(n, start + ev.batch_size)))
        with timer.section("forward"):
            batch = forward_batch(run, rows)
            results.add(batch)
            results.activation.add(*activation_maps(run, batch))
            results.activation.add_features(batch.out, batch.ids, run.test.labels[batch.rows])
        with timer.section("saliency"):
            maps = batch_saliency(run, batch)
        with timer.section("metrics"):
            score_batch(run, batch, maps, results, samples)
    return results


def forward_batch(run: EvalRun, rows: list[int]) -> Batch:
    """Test rows ``rows`` through the model, clean and perturbed, with their top-k."""
    test, inputs, ev = run.test, run.inputs, run.ev
    rgbs = [load_image(inputs.data_root, test.paths[i]) for i in rows]
    clean = torch.stack([inputs.raw(i) for i in rows])
    pert = torch.stack(
        [
            inputs.perturbed(
                perturb_image(rgb, ev.perturb, perturbation_seed(ev.seed, test.image_ids[i])),
                test,
                i,
            )
            for rgb, i in zip(rgbs, rows, strict=True)
        ]
    )
    x, xp = normalise(clean).to(run.device), normalise(pert).to(run.device)
    with torch.no_grad():
        out, out_p = run.model(x, return_embeddings=True), run.model(xp)
    head = run.model.head
    sim, sim_p = similarities(run.kind, head, out), similarities(run.kind, head, out_p)
    if run.spec.native:
        run.report.grid = tuple(native_maps(run.kind, out).shape[-2:])
    return Batch(rows, rgbs, x, xp, out, out_p, sim, sim_p, top_k_indices(sim, run.k))


def activation_maps(run: EvalRun, batch: Batch) -> tuple[Tensor, Tensor]:
    """(B, K, h, w) the top-k prototypes' own activation maps, clean and perturbed: the
    similarity per location (ProtoPNet, ProtoPool) or per view as an (M, 1) map
    (ProtoMask), PIP-Net's presence maps (the reference's ``similarity_maps``)."""
    pair = []
    for out in (batch.out, batch.out_p):
        if run.spec.presence:
            maps = out.maps
        else:
            maps = run.model.head.similarity(out.distances.float())
        idx = batch.ids.reshape(*batch.ids.shape, *([1] * (maps.dim() - 2)))
        maps = maps.float().gather(1, idx.expand(-1, -1, *maps.shape[2:]))
        pair.append(maps[..., None] if maps.dim() == 3 else maps)
    return pair[0], pair[1]


def batch_saliency(run: EvalRun, batch: Batch) -> BatchMaps:
    """Saliency of every (image, top-k prototype) pair, clean and perturbed, in one call."""
    b, k, ids = len(batch.rows), run.k, batch.ids
    protos = run.model.head.prototypes.detach()[ids].reshape(b * k, -1)
    if not run.spec.full_image:
        m_clean = batch.out.matched.gather(1, ids)  # (B, K) view index
        m_pert = batch.out_p.matched.gather(1, ids)
        bi = torch.arange(b, device=run.device)[:, None].expand(b, k)
        rows_in = torch.cat(
            [batch.x[bi, m_clean].flatten(0, 1), batch.xp[bi, m_pert].flatten(0, 1)]
        )
    else:
        m_clean = m_pert = None
        rows_in = torch.cat([batch.x.repeat_interleave(k, 0), batch.xp.repeat_interleave(k, 0)])
    maps, _ = prototype_saliency(
        run.explainer,
        rows_in,
        torch.cat([protos, protos]),
        method=run.ev.saliency,
        composite=run.ev.lrp_composite,
        batch_size=2 * run.ev.batch_size,
    )
    maps = finite(maps)
    return BatchMaps(rows_in, protos, maps.reshape(2, b, k, *maps.shape[-2:]), m_clean, m_pert)


def canvases(
    run: EvalRun, batch: Batch, maps: BatchMaps, j: int
) -> dict[str, tuple[Tensor, Tensor]]:
    """Method -> (clean, perturbed) (K, H, W) maps of batch image ``j`` on its canvas."""
    i = batch.rows[j]
    h, w = (int(v) for v in run.test.sizes[i])
    if not run.spec.full_image:
        boxes = torch.as_tensor(run.test.boxes[i])
        return {
            run.ev.saliency: (
                paste_back(maps.maps[0, j], boxes[maps.m_clean[j].cpu()], h, w),
                paste_back(maps.maps[1, j], boxes[maps.m_pert[j].cpu()], h, w),
            )
        }
    ids = batch.ids[j]
    out = {
        run.ev.saliency: (resize_maps(maps.maps[0, j], h, w), resize_maps(maps.maps[1, j], h, w))
    }
    if run.spec.native:
        out["upsampled"] = tuple(
            upsampled_native(run.kind, native_maps(run.kind, o)[j, ids], h, w)
            for o in (batch.out, batch.out_p)
        )
    return out


def score_batch(
    run: EvalRun, batch: Batch, maps: BatchMaps, results: PassResults, samples: set[int]
) -> None:
    """Per-item metrics of a batch's images; the report's samples; the sanity pairs."""
    test = run.test
    for j, i in enumerate(batch.rows):
        canvas = canvases(run, batch, maps, j)
        h, w = (int(v) for v in test.sizes[i])
        g = load_segmentation(run.inputs.data_root, test.segmentation[i], h, w)
        xy, vis = test.parts_of(i)
        box = box_mask(test.object_box(i), h, w)
        for method, (mc, mp) in canvas.items():
            results.stats[method].add(mc, mp, batch.ids[j].cpu().numpy(), g, xy, vis, box)
        if i in samples:
            run.report.add_sample(
                i,
                batch.rgbs[j],
                batch.ids[j].cpu(),
                batch.sim[j].cpu(),
                batch.out.logits[j].float().cpu(),
                None if maps.m_clean is None else maps.m_clean[j].cpu(),
                {m: c[0].cpu() for m, c in canvas.items()},
                g,
            )
    keep_sanity_pairs(run, batch, maps, results.sanity)


def keep_sanity_pairs(run: EvalRun, batch: Batch, maps: BatchMaps, sanity: list[SanityRow]) -> None:
    """Add the batch's top-1 pairs to ``sanity`` until it holds evaluate.sanity_images."""
    k = run.k
    for j in range(len(batch.rows)):
        if len(sanity) >= run.ev.sanity_images:
            return
        native = None
        if run.spec.native:
            native = native_maps(run.kind, batch.out)[j, batch.ids[j, 0]].cpu()
        sanity.append(
            SanityRow(
                maps.rows_in[j * k].cpu(),
                maps.protos[j * k].cpu(),
                maps.maps[0, j, 0].cpu(),
                native,
            )
        )
