"""Exact push (prototype projection) over the whole training set.

Each prototype is replaced by the nearest un-augmented training embedding of its own
class: a view vector for ProtoMask, a feature-map location vector for ProtoPNet. The
winner is the minimum of the key (distance, image_id, candidate index) over the whole
set, so the result is the same for any batch size, order, or split across DDP ranks
(the reference reset its running minimum per batch: the last batch won).

Distances are computed directly, sum((z - p)^2) in float64, one (candidate, own-class
prototype) pair at a time, so a pair's distance does not depend on what else is in its
batch. The caller feeds un-augmented inputs; the model runs in eval mode here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from model.head import unwrap_model

_MAX_CHUNK_ELEMENTS = 1 << 24  # float64 elements of one (images, candidates, Q, D) block
_NO_ID = -1


@dataclass
class PushCandidates:
    """Per prototype, the best candidate seen so far (or of one rank).

    Where a prototype has no candidate yet (distance inf, ids -1), ``vectors`` holds its
    current prototype vector, so the final vectors are the new prototypes as they are.
    """

    distance: Tensor  # (P,) float64, inf where none
    image_id: Tensor  # (P,) long, -1 where none
    index: Tensor  # (P,) long, flat candidate index (view m, or h * W + w), -1 where none
    vectors: Tensor  # (P, D) float32


@dataclass
class PushResult:
    """Where every prototype came from after push; ``image_id`` -1: its class had no data."""

    distance: Tensor  # (P,) float64
    image_id: Tensor  # (P,) long
    index: Tensor  # (P,) long
    vectors: Tensor  # (P, D) float32, the new prototypes
    grid: tuple[int, ...]  # (M,) for ProtoMask, (h, w) for ProtoPNet

    def location(self) -> Tensor:
        """(P, len(grid)) the candidate index unravelled over the grid ((m,) or (h, w))."""
        out = torch.empty(len(self.index), len(self.grid), dtype=torch.long)
        rest = self.index.clone()
        for axis in range(len(self.grid) - 1, -1, -1):
            out[:, axis] = rest % self.grid[axis]
            rest = rest // self.grid[axis]
        out[self.index < 0] = -1
        return out

    def records(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per prototype: prototype, image_id, view or h/w, distance."""
        loc = self.location().tolist()
        keys = ("view",) if len(self.grid) == 1 else ("h", "w")
        return [
            {
                "prototype": p,
                "image_id": int(i),
                **dict(zip(keys, where, strict=False)),
                "distance": float(d),
            }
            for p, (i, where, d) in enumerate(
                zip(self.image_id.tolist(), loc, self.distance.tolist(), strict=False)
            )
        ]


def _key_less(
    d_a: Tensor, i_a: Tensor, x_a: Tensor, d_b: Tensor, i_b: Tensor, x_b: Tensor
) -> Tensor:
    """Elementwise (d_a, i_a, x_a) < (d_b, i_b, x_b) lexicographically."""
    return (d_a < d_b) | ((d_a == d_b) & ((i_a < i_b) | ((i_a == i_b) & (x_a < x_b))))


def reduce_candidates(
    prototype: Tensor,
    distance: Tensor,
    image_id: Tensor,
    index: Tensor,
    vectors: Tensor,
    num_prototypes: int,
    fallback: Optional[Tensor] = None,
) -> PushCandidates:
    """Per prototype, the candidate row with the smallest (distance, image_id, index).

    Rows: ``prototype`` (R,) target prototype, ``distance`` (R,) float64, ``image_id`` and
    ``index`` (R,) long, ``vectors`` (R, D). Prototypes without a row get inf / -1 and
    their ``fallback`` vector (zeros if None). Vectorised (scatter-reduce), no loop over
    prototypes.
    """
    dev, p_num = distance.device, num_prototypes
    big = torch.iinfo(torch.long).max
    best_d = torch.full((p_num,), float("inf"), dtype=torch.float64, device=dev)
    best_d = best_d.scatter_reduce(0, prototype, distance, "amin")
    m = distance == best_d[prototype]
    best_i = torch.full((p_num,), big, dtype=torch.long, device=dev)
    best_i = best_i.scatter_reduce(0, prototype[m], image_id[m], "amin")
    m &= image_id == best_i[prototype]
    best_x = torch.full((p_num,), big, dtype=torch.long, device=dev)
    best_x = best_x.scatter_reduce(0, prototype[m], index[m], "amin")
    m &= index == best_x[prototype]
    rows = torch.arange(len(prototype), device=dev)
    best_row = torch.full((p_num,), big, dtype=torch.long, device=dev)
    best_row = best_row.scatter_reduce(0, prototype[m], rows[m], "amin")
    found = (best_row != big) & torch.isfinite(best_d)
    out_vec = (
        fallback.to(dev, vectors.dtype).clone()
        if fallback is not None
        else torch.zeros(p_num, vectors.shape[1], dtype=vectors.dtype, device=dev)
    )
    out_vec[found] = vectors[best_row[found]]
    return PushCandidates(
        best_d.masked_fill(~found, float("inf")),
        best_i.masked_fill(~found, _NO_ID),
        best_x.masked_fill(~found, _NO_ID),
        out_vec,
    )


def merge_candidates(parts: Sequence[PushCandidates]) -> PushCandidates:
    """The per-prototype best of several candidate sets (batches, or DDP ranks).

    Entries without a candidate (image_id -1) take no part; a prototype with none in any
    part keeps the first part's vector.
    """
    p_num = len(parts[0].distance)
    dev = parts[0].distance.device
    proto = torch.arange(p_num, device=dev).repeat(len(parts))
    image_id = torch.cat([c.image_id for c in parts])
    keep = image_id >= 0
    return reduce_candidates(
        proto[keep],
        torch.cat([c.distance for c in parts])[keep],
        image_id[keep],
        torch.cat([c.index for c in parts])[keep],
        torch.cat([c.vectors for c in parts])[keep],
        p_num,
        fallback=parts[0].vectors,
    )


def gather_across_ranks(local: PushCandidates) -> PushCandidates:
    """all_gather every rank's best candidates and reduce them (identity without DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    world = dist.get_world_size()
    gathered: list[list[Tensor]] = []
    for t in (local.distance, local.image_id, local.index, local.vectors):
        t = t.contiguous()
        bufs = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(bufs, t)
        gathered.append(bufs)
    return merge_candidates([PushCandidates(*(g[r] for g in gathered)) for r in range(world)])


def _batch_candidates(
    cands: Tensor, labels: Tensor, image_ids: Tensor, protos: Tensor, table: Tensor
) -> PushCandidates:
    """Best candidate per prototype within one batch; cands (B, N, D), protos (P, D) f64."""
    b, n, d = cands.shape
    q = table.shape[1]
    pidx = table[labels]  # (B, Q)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, n * q * d))
    dmin_parts, arg_parts = [], []
    for s in range(0, b, chunk):
        c = cands[s : s + chunk].double()  # (b', N, D)
        p = protos[pidx[s : s + chunk].clamp_min(0)]  # (b', Q, D)
        dd = ((c[:, :, None, :] - p[:, None, :, :]) ** 2).sum(-1)  # (b', N, Q)
        dmin = dd.amin(dim=1)  # (b', Q)
        pos = torch.arange(n, device=dd.device)[None, :, None].expand_as(dd)
        arg = torch.where(dd == dmin[:, None, :], pos, n).amin(dim=1)  # first minimum
        dmin_parts.append(dmin)
        arg_parts.append(arg)
    dmin, arg = torch.cat(dmin_parts), torch.cat(arg_parts)
    valid = (pidx >= 0).flatten()
    rows_img = torch.arange(b, device=cands.device)[:, None].expand(b, q).flatten()[valid]
    arg = arg.flatten()[valid]
    vec = cands[rows_img, arg].float()
    return reduce_candidates(
        pidx.flatten()[valid],
        dmin.flatten()[valid],
        image_ids.to(cands.device)[rows_img],
        arg,
        vec,
        len(protos),
    )


def find_push_candidates(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    device: Optional[torch.device | str] = None,
) -> tuple[PushCandidates, tuple[int, ...]]:
    """Scan (inputs, labels, image_ids) batches; the global best candidate per prototype
    (gathered across DDP ranks) and the candidate grid. The model is left in its mode."""
    core = unwrap_model(model)
    head = core.head
    dev = torch.device(device) if device is not None else head.prototypes.device
    protos = head.prototypes.detach().to(dev, torch.float64)
    table = head.class_prototype_table().to(dev)
    p_num = len(protos)
    best = PushCandidates(
        torch.full((p_num,), float("inf"), dtype=torch.float64, device=dev),
        torch.full((p_num,), _NO_ID, dtype=torch.long, device=dev),
        torch.full((p_num,), _NO_ID, dtype=torch.long, device=dev),
        head.prototypes.detach().to(dev, torch.float32).clone(),
    )
    grid: tuple[int, ...] = ()
    was_training = core.training
    core.eval()
    try:
        with torch.no_grad():
            for inputs, labels, image_ids in batches:
                cands, g = core.push_candidates(inputs.to(dev, non_blocking=True))
                if grid and g != grid:
                    raise ValueError(f"push candidates changed shape: {grid} then {g}")
                grid = g
                batch = _batch_candidates(
                    cands,
                    torch.as_tensor(labels, device=dev).long(),
                    torch.as_tensor(image_ids).long(),
                    protos,
                    table,
                )
                best = merge_candidates([best, batch])
    finally:
        core.train(was_training)
    best = gather_across_ranks(best)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        grids = [None] * dist.get_world_size()
        dist.all_gather_object(grids, grid)
        grid = next((g for g in grids if g), grid)
    return best, grid


def push_prototypes(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    device: Optional[torch.device | str] = None,
    update: bool = True,
) -> PushResult:
    """Exact push: replace each prototype by its class's nearest training embedding.

    ``batches`` yields (inputs, labels, image_ids) of UN-augmented training data (views
    (B, M, 3, S, S) for ProtoMask, images for ProtoPNet); under DDP each rank passes its
    own shard and all ranks get the same result. A prototype whose class has no training
    embedding keeps its vector (image_id -1, distance inf). ``update``: write the new
    vectors into the model (else only report).
    """
    best, grid = find_push_candidates(model, batches, device)
    head = unwrap_model(model).head
    if update:
        with torch.no_grad():
            head.prototypes.copy_(best.vectors.to(head.prototypes.device, head.prototypes.dtype))
    return PushResult(
        best.distance.cpu(), best.image_id.cpu(), best.index.cpu(), best.vectors.cpu(), grid
    )
