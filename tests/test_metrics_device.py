"""The metrics give the same numbers for CUDA tensors as for CPU arrays (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import model.metrics as M

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def both(fn, *args, **kwargs):
    cpu = fn(*args, **kwargs)
    gpu = fn(
        *[torch.as_tensor(a).cuda() if isinstance(a, np.ndarray) else a for a in args], **kwargs
    )
    return cpu, gpu


def close(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        a, b = a.cpu().numpy(), b.cpu().numpy()
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), equal_nan=True))


def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(0)
    n, k, h, w, q, p, c = 4, 5, 32, 32, 6, 20, 4
    sal = rng.normal(size=(n, k, h, w)).astype(np.float32)
    g = rng.random((n, h, w)) > 0.6
    s = M.top_fraction_mask(sal).numpy()
    xy = rng.uniform(0, 31, size=(n, q, 2)).astype(np.float32)
    vis = rng.random((n, q)) > 0.3
    sim = rng.random((n, p)).astype(np.float32)
    sim2 = sim + 0.05 * rng.normal(size=(n, p)).astype(np.float32)
    logits = rng.normal(size=(n, c)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    vectors = rng.random((n, k, 8)).astype(np.float32)
    checks = [
        both(M.top_fraction_mask, sal),
        both(M.object_overlap, s, g),
        both(M.background_overlap, s, g),
        both(M.ior, sal, g),
        both(M.pointing_energy, sal, g),
        both(M.pointing_hit, sal, g),
        both(M.vlc, s),
        both(M.parts_in_masks, s, xy, vis),
        both(M.psc, sim, sim2),
        both(M.prc, sim, sim2),
        both(M.crc, logits, logits + 0.3),
        both(M.intra_pd, vectors),
        both(M.inter_pd, vectors, y),
        both(M.stability, s[:, :, 0, :q], s[:, :, 1, :q]),
        both(M.consistency, M.top_k_indices(sim, k).numpy(), s[:, :, 0, :q]),
        both(M.spearman, sal[:, 0], sal[:, 1]),
        both(M.top_mask_iou, sal[:, 0], sal[:, 1]),
        both(M.balanced_accuracy, y, logits.argmax(1)),
        both(M.macro_f1, y, logits.argmax(1)),
        both(M.top_k_accuracy, y, logits),
        both(M.mask_part_codes, s[0], xy[0], vis[0]),
    ]
    for i, (cpu, gpu) in enumerate(checks):
        assert close(cpu, gpu), i
