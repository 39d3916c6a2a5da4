"""The evaluate stage's input preparation, in DataLoader workers: per test image the
decoded pixels, the clean model input, the perturbed copy cut as the model sees it
(:mod:`pipeline.perturbation`, :class:`pipeline.model_inputs.ModelInputs`) and the
ground-truth object segmentation.

Batches are lists of test rows fixed by the caller (``evaluate.batch_size`` rows each,
this process's share of them); the loader yields them in that order, each prepared
exactly as the main process would (an item depends only on its row, the params and the
image's noise seed), so any worker count gives the same bytes.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import ProtomaskError
from pipeline.evaluation_set import TestSet, load_image, load_segmentation
from pipeline.model_inputs import ModelInputs, ViewMasks
from pipeline.params import PerturbParams
from pipeline.perturbation import perturb_image, perturbation_seed


@dataclass
class PreparedBatch:
    """One batch of test rows, ready for the model (uint8 inputs, not yet normalised)."""

    rows: list[int]
    rgbs: list[np.ndarray]  # the decoded clean images, H x W x 3 uint8
    clean: Tensor  # (B, M, 3, S, S) views or (B, 3, s, s) images
    perturbed: Tensor  # the same cut from the perturbed copy
    segmentations: list[Optional[np.ndarray]]  # (H, W) bool ground-truth object, or None


class PreparedInputs(Dataset):
    """Test row -> its prepared item (:func:`collate` makes a :class:`PreparedBatch`).

    Each process works with its own mask shard handles: a forked or spawned worker
    replaces the ones it inherited by unopened ones on first use.
    """

    def __init__(
        self, inputs: ModelInputs, test: TestSet, perturb: PerturbParams, seed: int
    ) -> None:
        self.inputs = inputs
        self.test = test
        self.perturb = perturb
        self.seed = seed
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.test.image_ids)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["inputs"] = _with_fresh_masks(self.inputs)
        return state

    def _own_inputs(self) -> ModelInputs:
        if self._pid != os.getpid():  # a forked worker: never share the parent's handles
            self.inputs, self._pid = _with_fresh_masks(self.inputs), os.getpid()
        return self.inputs

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, Tensor, Tensor, Optional[np.ndarray]]:
        inputs, test = self._own_inputs(), self.test
        rgb = load_image(inputs.data_root, test.paths[i])
        noisy = perturb_image(rgb, self.perturb, perturbation_seed(self.seed, test.image_ids[i]))
        h, w = (int(v) for v in test.sizes[i])
        g = load_segmentation(inputs.data_root, test.segmentation[i], h, w)
        return i, rgb, inputs.raw(i), inputs.perturbed(noisy, test, i), g


def _with_fresh_masks(inputs: ModelInputs) -> ModelInputs:
    """A shallow copy of ``inputs`` with its own, unopened mask shards."""
    own = copy.copy(inputs)
    own.masks = ViewMasks(inputs.masks.root)
    return own


def collate(items: list[tuple]) -> PreparedBatch:
    """Items of :class:`PreparedInputs` -> one :class:`PreparedBatch`."""
    rows, rgbs, clean, perturbed, gs = zip(*items, strict=True)
    return PreparedBatch(
        list(rows), list(rgbs), torch.stack(clean), torch.stack(perturbed), list(gs)
    )


# A loader worker that cannot hand its batch over (its tensors go through shared memory:
# a full /dev/shm, e.g. Docker's 64 MB default, or a file-size limit) drops it without
# an error, and the stage would wait for it forever: after this long without a batch,
# evaluate stops and says so. Preparing one batch takes well under a second per image.
LOADER_TIMEOUT_S = 600


def prepared_batches(
    dataset: PreparedInputs,
    batches: list[list[int]],
    workers: int,
    timeout_s: float = LOADER_TIMEOUT_S,
) -> Iterator[PreparedBatch]:
    """The batches of test rows ``batches``, prepared in ``workers`` processes (0: in this
    one), in the order given; ProtomaskError when the workers deliver nothing for
    ``timeout_s`` seconds."""
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
        timeout=timeout_s if workers else 0,
    )
    items = iter(loader)
    while True:
        try:
            batch = next(items)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "timed out" not in str(exc):
                raise
            raise ProtomaskError(
                f"evaluate: the {workers} loader workers delivered no batch for "
                f"{timeout_s:.0f} s (a worker could not hand its batch over: often a full "
                "/dev/shm, e.g. a container's 64 MB); enlarge /dev/shm or set "
                "evaluate.loader_workers: 0"
            ) from None
        yield batch
