"""The model-randomisation sanity check of the evaluate stage.

The saliency of the first ``evaluate.sanity_images`` test images' top-1 prototype, from the
trained model and from the same model with a re-initialised trunk (seeded by
``evaluate.seed``): a faithful saliency method must change, so the check passes when the
mean Spearman correlation of the two input-level maps is below 0.5. A model with a native
map (:data:`pipeline.model_inputs.KINDS`: ProtoPNet's and ProtoPool's upsampled similarity
maps, PIP-Net's upsampled presence maps) has it checked the same way as ``upsampled``. The
randomised copy is the explained model (:func:`model.model_kinds.explained_model`) with
its trunk shuffled; for PIP-Net the one-hot "prototype" picks the presence channel.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from model.metrics import Absent, mean_of, randomisation_verdict, spearman, top_mask_iou
from model.model_kinds import make_explainer, model_kind, recompute_native, upsampled_native
from model.saliency import prototype_saliency, randomised_copy
from pipeline.params import EvaluateParams

RANDOMISATION_THRESHOLD = 0.5


class SanityRow(NamedTuple):
    """One (input, prototype) pair of the check, with the trained model's map."""

    input: Tensor  # the normalised model input (a view or the image)
    prototype: Tensor  # the prototype vector (PIP-Net: its one-hot row)
    trained_map: Tensor  # (h, w) input-level saliency of the trained model
    native: Optional[Tensor]  # (gh, gw) native map: distances to the prototype, presence


def finite(maps: Tensor) -> Tensor:
    """Maps with non-finite values (an unstable LRP rule) zeroed rather than crashing."""
    return torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)


def randomisation_check(
    model: nn.Module, kind: str, rows: list[SanityRow], ev: EvaluateParams, device: torch.device
) -> dict[str, dict]:
    """Trained vs trunk-randomised saliency of the same (input, prototype) pairs.

    Args:
        model: the trained network as explained (left unchanged).
        kind: a model kind of :data:`pipeline.model_inputs.KINDS`.
        rows: the pairs, with the trained model's maps.
        ev: params evaluate (saliency method, composite, seed).
        device: where the randomised copy runs.

    Returns:
        saliency method (and ``upsampled`` with a native map) -> :func:`similarity_report`,
        or an absent Spearman when there is no pair.
    """
    methods = model_kind(kind).methods(ev.saliency)
    if not rows:
        absent = Absent("evaluate.sanity_images is 0")
        return {m: {"spearman": absent, "passed": None} for m in methods}
    inputs = torch.stack([r.input for r in rows]).to(device)
    protos = torch.stack([r.prototype for r in rows]).to(device)
    trained = torch.stack([r.trained_map for r in rows])
    random_model = randomised_copy(model, ev.seed).eval()
    explainer = make_explainer(kind, random_model.trunk, random_model.add_on)
    rand, _ = prototype_saliency(
        explainer,
        inputs,
        protos,
        method=ev.saliency,
        composite=ev.lrp_composite,
        batch_size=len(rows),
    )
    out = {ev.saliency: similarity_report(trained, finite(rand).cpu())}
    if "upsampled" in methods:
        h, w = inputs.shape[-2:]
        trained_up = upsampled_native(kind, torch.stack([r.native for r in rows]), h, w)
        rand_native = recompute_native(kind, random_model, inputs, protos).cpu()
        out["upsampled"] = similarity_report(trained_up, upsampled_native(kind, rand_native, h, w))
    return out


def similarity_report(a: Tensor, b: Tensor) -> dict[str, Any]:
    """How alike maps ``a`` and ``b`` (N, H, W) are, pair by pair.

    Returns:
        ``spearman`` (mean), ``spearman_abs``, ``top_mask_iou``, ``pairs`` (defined
        pairs) and ``passed`` (the mean Spearman is below RANDOMISATION_THRESHOLD).
    """
    verdict = randomisation_verdict(spearman(a, b), RANDOMISATION_THRESHOLD)
    return {
        "spearman": verdict["mean_similarity"],
        "spearman_abs": mean_of(spearman(a, b, absolute=True), "constant maps"),
        "top_mask_iou": mean_of(top_mask_iou(a, b), "no positive saliency"),
        "pairs": verdict["pairs"],
        "passed": verdict["passed"],
    }
