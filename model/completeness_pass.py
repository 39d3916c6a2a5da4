"""Output completeness in the evaluate pass (the reference's
``evaluate_output_completeness``; formulas in :mod:`model.metrics.completeness`).

For each batch of the pass and each rank r < ``evaluate.completeness_top_k`` of the
batch's top-k prototypes: the bounding box of S of the image's r-th prototype (on the
image canvas) is kept, and Gaussian noise (``evaluate.completeness_noise_std`` in the
normalised input) is added to the model input everywhere else
(:func:`pipeline.perturbation.noise_outside_box`: ProtoMask's views each where they show
pixels outside the box, a full-image model's input as the view of the whole image). The
noised input goes through the model and the r-th prototype's saliency is computed on it
(ProtoMask: on the view it matched there); its changes against the clean input are kept
per item. The noise of an image is seeded by ``evaluate.seed``, its id and r only, so
any batching, rank or worker count gives the same values.

Deviation from the reference: it adds the noise to each view of ProtoMask with the box
taken in the whole image's frame; here the box is mapped into each view's own frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from torch import Tensor

from model.map_stats import CompletenessStats
from model.metrics import top_fraction_mask
from model.metrics.completeness import completeness_changes, explanation_box
from model.model_kinds import similarities
from model.pass_maps import prototype_activation, saliency_canvas
from model.randomisation import finite
from model.saliency import prototype_saliency
from pipeline.perturbation import completeness_rng, noise_outside_box
from pipeline.views import view_owners

if TYPE_CHECKING:
    from model.explain_pass import Batch, BatchMaps, EvalRun


def add_completeness(run: EvalRun, batch: Batch, maps: BatchMaps, stats: CompletenessStats) -> None:
    """Add the output-completeness changes of a batch's images to ``stats`` (nothing when
    evaluate.output_completeness is off)."""
    if not run.ev.output_completeness:
        return
    for r in range(min(run.ev.completeness_top_k, run.k)):
        clean = [
            saliency_canvas(
                run,
                i,
                maps.maps[0, j, r : r + 1],
                None if maps.m_clean is None else maps.m_clean[j, r : r + 1],
            )
            for j, i in enumerate(batch.rows)
        ]
        keep = [explanation_box(top_fraction_mask(c[0], run.ev.top_fraction)) for c in clean]
        noised, noised_maps, matched = noised_pass(run, batch, maps, keep, r)
        ids = batch.ids[:, r : r + 1]
        act = prototype_activation(run, batch.out, ids)[:, 0].cpu()
        act_n = prototype_activation(run, noised, ids)[:, 0].cpu()
        scores_n = similarities(run.kind, run.model.head, noised)
        for j, i in enumerate(batch.rows):
            m = None if matched is None else matched[j : j + 1]
            stats.add(
                completeness_changes(
                    clean[j],
                    saliency_canvas(run, i, noised_maps[j : j + 1], m),
                    act[j : j + 1],
                    act_n[j : j + 1],
                    batch.sim[j : j + 1].cpu(),
                    scores_n[j : j + 1].cpu(),
                    ids[j].cpu(),
                    run.ev.top_fraction,
                )
            )


def noised_pass(
    run: EvalRun, batch: Batch, maps: BatchMaps, keep: list[Optional[tuple]], r: int
) -> tuple[object, Tensor, Optional[Tensor]]:
    """The batch's input noised outside the boxes ``keep`` through the model, and the
    saliency of each image's r-th prototype on it.

    Returns:
        The forward output, (B, h, w) the saliency maps and (ProtoMask) (B,) the view
        each prototype matched on the noised input (None for a full-image model).
    """
    b = len(batch.rows)
    x = batch.x + noise_of(run, batch, keep, r).to(batch.x.device)
    with torch.no_grad():
        out = run.model(x)
    matched = None
    rows_in = x
    if not run.spec.full_image:
        matched = out.matched.gather(1, batch.ids[:, r : r + 1])[:, 0]
        rows_in = x[torch.arange(b, device=x.device), matched]
    protos = maps.protos.reshape(b, run.k, -1)[:, r]
    saliency, _ = prototype_saliency(
        run.explainer,
        rows_in,
        protos,
        method=run.ev.saliency,
        composite=run.ev.lrp_composite,
        batch_size=2 * run.ev.batch_size,
    )
    return out, finite(saliency), None if matched is None else matched.cpu()


def noise_of(run: EvalRun, batch: Batch, keep: list[Optional[tuple]], r: int) -> Tensor:
    """(B, ...) the noise added to the batch's normalised input for its r-th prototypes:
    zero inside each image's box ``keep[j]`` (None: noise everywhere); a repeated view
    gets its original's noise."""
    shape = tuple(batch.x.shape[1:])
    out = []
    for j, i in enumerate(batch.rows):
        rng = completeness_rng(run.ev.seed, int(run.test.image_ids[i]), r)
        std = run.ev.completeness_noise_std
        if run.spec.full_image:
            h, w = (int(v) for v in run.test.sizes[i])
            whole = np.array([[0, 0, w - 1, h - 1]])
            noise = noise_outside_box((1, *shape), whole, keep[j], std, rng)[0]
        else:
            noise = noise_outside_box(shape, run.test.boxes[i], keep[j], std, rng)
            noise = noise[view_owners(run.test.duplicate_of[i])]
        out.append(torch.from_numpy(np.ascontiguousarray(noise)))
    return torch.stack(out)
