"""Duplicate prototypes, flagged in the report's global view: two prototypes are
duplicates when they were pushed onto the same source (the same training view, or the
same feature-map cell of the same training image), or when their similarity to the test
inputs differs by at most ``tolerance`` on more than ``share`` of the inputs (for a
presence model, of the inputs where one of them is present: pooled presence at least
``present``; two prototypes absent everywhere are not compared)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

TOLERANCE = 1e-3  # similarities this close count as equal
SHARE = 0.5  # "most inputs": more than this share of them


@dataclass(frozen=True)
class Duplicate:
    """Prototype ``of`` (the lowest index of its group) and why."""

    of: int
    reason: str


def duplicates(
    candidates: list[int],
    sources: dict[int, Hashable],
    sim: Optional[Tensor],
    *,
    tolerance: float = TOLERANCE,
    share: float = SHARE,
    present: Optional[float] = None,
) -> dict[int, Duplicate]:
    """The duplicates among ``candidates`` (prototype indices).

    Args:
        candidates: the prototypes compared.
        sources: prototype -> its push source (any comparable key); a prototype missing
            here has no source.
        sim: (N, P) similarity of every test input to every prototype, or None.
        tolerance: similarities at most this far apart are equal.
        share: a pair is a duplicate when equal on more than this share of the inputs.
        present: for presence scores, compare only on inputs where one of the pair
            reaches it.

    Returns:
        Prototype -> :class:`Duplicate` of the first earlier candidate it duplicates;
        the first of each group is not in it.
    """
    out: dict[int, Duplicate] = {}
    ordered = sorted(set(candidates))
    first_of_source: dict[Hashable, int] = {}
    for p in ordered:
        key = sources.get(p)
        if key is None:
            continue
        if key in first_of_source:
            out[p] = Duplicate(first_of_source[key], "same push source")
        else:
            first_of_source[key] = p
    if sim is None or sim.shape[0] == 0:
        return out
    values = sim[:, ordered].double()
    for j, p in enumerate(ordered):
        if p in out or j == 0:
            continue
        equal = (values[:, :j] - values[:, j : j + 1]).abs() <= tolerance  # (N, j)
        if present is None:
            counted = torch.ones_like(equal)
        else:
            counted = (values[:, :j] >= present) | (values[:, j : j + 1] >= present)
        n = counted.sum(0)
        frac = (equal & counted).sum(0) / n.clamp_min(1)
        hits = ((frac > share) & (n > 0)).nonzero().flatten()
        if len(hits):
            q = int(hits[0])
            out[p] = Duplicate(
                ordered[q],
                f"similarity within {tolerance:g} on {100 * float(frac[q]):.0f}% "
                f"of {int(n[q])} test inputs",
            )
    return out
