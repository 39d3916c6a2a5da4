"""One pass over the test images, in batches of ``evaluate.batch_size``.

The batches are fixed by the test split alone (rows 0..B-1, B..2B-1, ...). Under
``torchrun`` each rank takes every world-size-th batch (:func:`model.distributed.my_share`);
DataLoader workers prepare each batch's inputs (:mod:`pipeline.evaluation_loader`); each
batch's per-item results (a :class:`PassResults` of that batch alone) are gathered on rank
0 and joined in batch order. A batch holds the same rows whatever the number of processes
or workers, so the joined results, and the metrics, are the same bytes as one process's.

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
4. :func:`model.completeness_pass.add_completeness`: output completeness, the input noised
   outside the box of each of the first ``evaluate.completeness_top_k`` prototypes' S
   through the model and the saliency again (:class:`CompletenessStats`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from model import distributed as dist_utils
from model.completeness_pass import add_completeness
from model.map_stats import ActivationStats, CompletenessStats, MapStats
from model.metrics import box_mask, top_k_indices
from model.model_kinds import native_maps, similarities, upsampled_native
from model.pass_maps import prototype_activation, saliency_canvas
from model.randomisation import SanityRow, finite
from model.report import ReportBuilder
from model.saliency import prototype_saliency
from model.scalars import Scores
from model.timing import Timer
from pipeline import devices
from pipeline.evaluation_loader import PreparedBatch, PreparedInputs, prepared_batches
from pipeline.evaluation_set import TestSet
from pipeline.model_inputs import ModelInputs, ModelKind, model_kind
from pipeline.params import EvaluateParams
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
    segmentations: list[Optional[np.ndarray]]  # their ground-truth objects (or None)
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
    """What the pass keeps: the model's outputs, per-item metrics, sanity pairs, the
    report's samples (those of one batch, or of every batch joined in order)."""

    stats: dict[str, MapStats]
    parts: dict[str, list[Tensor]] = field(
        default_factory=lambda: {
            name: [] for name in ("sim", "sim_p", "logits", "logits_p", "top_ids", "matched")
        }
    )
    sanity: list[SanityRow] = field(default_factory=list)
    activation: ActivationStats = field(default_factory=ActivationStats)
    completeness: CompletenessStats = field(default_factory=CompletenessStats)
    samples: list[dict] = field(default_factory=list)  # ReportBuilder.samples entries

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

    def extend(self, later: PassResults) -> None:
        """Append the results of the batches that come after these."""
        for method, stats in self.stats.items():
            other = later.stats[method]
            for f in fields(MapStats):
                mine = getattr(stats, f.name)
                if isinstance(mine, list):
                    mine.extend(getattr(other, f.name))
            stats.any_g |= other.any_g
            stats.any_box |= other.any_box
        for name, values in self.parts.items():
            values.extend(later.parts[name])
        self.activation.merge(later.activation)
        self.completeness.merge(later.completeness)
        self.sanity.extend(later.sanity)
        self.samples.extend(later.samples)

    def scores(self) -> Scores:
        """The kept outputs of every batch, concatenated."""
        joined = {name: torch.cat(values) for name, values in self.parts.items()}
        return Scores(**joined, activation=self.activation.results())


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor inside it (dataclasses, dicts, lists, tuples) on the
    CPU: what a rank sends to rank 0."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, SanityRow):
        return SanityRow(*(on_cpu(v) for v in value))
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        for f in fields(value):
            setattr(value, f.name, on_cpu(getattr(value, f.name)))
    return value


def batch_rows(n: int, batch_size: int) -> list[list[int]]:
    """The pass's batches of test rows: consecutive runs of ``batch_size`` rows."""
    return [list(range(start, min(n, start + batch_size))) for start in range(0, n, batch_size)]


def loader_workers(ev: EvaluateParams) -> int:
    """evaluate.loader_workers, or (null) this process's share of the machine's cores,
    at most 8: torchrun's LOCAL_WORLD_SIZE processes share them."""
    return devices.worker_count(ev.loader_workers, dist_utils.local_world_size(), cap=8)


def explain_test_set(run: EvalRun, timer: Timer) -> Optional[PassResults]:
    """The pass over every test image (timed as inputs, forward, saliency and metrics):
    this rank's batches, gathered on rank 0.

    Args:
        run: the evaluation.
        timer: takes the seconds of each step.

    Returns:
        On rank 0 (or without distribution) the kept outputs, per-item metrics, sanity
        pairs and report samples of every batch, in batch order; None on the other ranks.
    """
    ev, n = run.ev, len(run.test.image_ids)
    samples = set(run.report.sample_rows(n))
    mine = dist_utils.my_share(batch_rows(n, ev.batch_size))
    dataset = PreparedInputs(run.inputs, run.test, ev.perturb, ev.seed)
    prepared = prepared_batches(dataset, [rows for _, rows in mine], loader_workers(ev))
    desc = f"evaluate {run.kind} seed {run.report.seed}: saliency"
    bar = Progress(
        desc, len(mine), "batch", logger=log, every=0.25, leave=False, enabled=dist_utils.is_main()
    )
    done: list[tuple[int, PassResults]] = []
    batches = iter(prepared)
    for index, _ in track(mine, bar):
        with timer.section("inputs"):
            inputs = next(batches)
        results = new_results(run)
        with timer.section("forward"):
            batch = forward_batch(run, inputs)
            results.add(batch)
            results.activation.add(*activation_maps(run, batch))
            results.activation.add_features(batch.out, batch.ids, run.test.labels[batch.rows])
        with timer.section("saliency"):
            maps = batch_saliency(run, batch)
        with timer.section("metrics"):
            score_batch(run, batch, maps, results, samples)
        with timer.section("completeness"):
            add_completeness(run, batch, maps, results.completeness)
        done.append((index, on_cpu(results)))
    with timer.section("gather"):
        gathered = dist_utils.gather_to_main(done)
    if gathered is None:
        return None
    ordered = sorted((pair for rank in gathered for pair in rank), key=lambda pair: pair[0])
    joined = new_results(run)
    for _, results in ordered:
        joined.extend(results)
    return joined


def new_results(run: EvalRun) -> PassResults:
    """Empty results of the pass: a MapStats per method, completeness on or off."""
    return PassResults(
        {m: MapStats(run.ev.top_fraction) for m in run.methods},
        completeness=CompletenessStats(run.ev.output_completeness),
    )


def forward_batch(run: EvalRun, inputs: PreparedBatch) -> Batch:
    """A prepared batch of test rows through the model, clean and perturbed, with their
    top-k."""
    clean, pert = inputs.clean, inputs.perturbed
    x, xp = normalise(clean).to(run.device), normalise(pert).to(run.device)
    with torch.no_grad():
        out, out_p = run.model(x, return_embeddings=True), run.model(xp)
    head = run.model.head
    sim, sim_p = similarities(run.kind, head, out), similarities(run.kind, head, out_p)
    if run.spec.native:
        run.report.grid = tuple(native_maps(run.kind, out).shape[-2:])
    return Batch(
        inputs.rows,
        inputs.rgbs,
        inputs.segmentations,
        x,
        xp,
        out,
        out_p,
        sim,
        sim_p,
        top_k_indices(sim, run.k),
    )


def activation_maps(run: EvalRun, batch: Batch) -> tuple[Tensor, Tensor]:
    """(B, K, h, w) the top-k prototypes' own activation maps
    (:func:`model.pass_maps.prototype_activation`), clean and perturbed."""
    return (
        prototype_activation(run, batch.out, batch.ids),
        prototype_activation(run, batch.out_p, batch.ids),
    )


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
    clean, pert = (None, None) if maps.m_clean is None else (maps.m_clean[j], maps.m_pert[j])
    out = {
        run.ev.saliency: (
            saliency_canvas(run, i, maps.maps[0, j], clean),
            saliency_canvas(run, i, maps.maps[1, j], pert),
        )
    }
    if run.spec.native:
        h, w = (int(v) for v in run.test.sizes[i])
        ids = batch.ids[j]
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
        g = batch.segmentations[j]
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
            results.samples.append(run.report.samples.pop())  # joined in batch order later
    keep_sanity_pairs(run, batch, maps, results.sanity)


def keep_sanity_pairs(run: EvalRun, batch: Batch, maps: BatchMaps, sanity: list[SanityRow]) -> None:
    """Add the top-1 pairs of the batch's rows among the first evaluate.sanity_images
    test rows to ``sanity``."""
    k = run.k
    for j, i in enumerate(batch.rows):
        if i >= run.ev.sanity_images:
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
