"""The perturbed copy of a test image (evaluate: stability, PSC, PRC, CRC), and the noise
of output completeness (Gaussian noise outside a box, :func:`noise_outside_box`).

Colour jitter with fixed factors, Gaussian noise, box blur and JPEG re-encoding, in this
order (the reference's continuity pipeline); the noise of each image is seeded by
``evaluate.seed`` and the image id, so a rerun perturbs every image the same way. The
colour jitter runs on one torch thread (the contrast factor's image mean is a reduction,
whose float sum depends on how many threads split it), so the copy is the same in the
main process and in a single-threaded DataLoader worker.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Optional

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from pipeline.params import PerturbParams


def perturbation_seed(seed: int, image_id: int) -> int:
    """The noise seed of one image: a function of ``evaluate.seed`` and its id only."""
    return seed * 1_000_003 + int(image_id)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 inside, restored after."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def perturb_image(rgb: np.ndarray, p: PerturbParams, seed: int) -> np.ndarray:
    """The perturbed copy of an image.

    Args:
        rgb: H x W x 3 uint8.
        p: the perturbation (params evaluate.perturb).
        seed: seed of the Gaussian noise (:func:`perturbation_seed`).

    Returns:
        H x W x 3 uint8, C-contiguous.
    """
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    with one_torch_thread():
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


def completeness_rng(seed: int, image_id: int, rank: int) -> np.random.Generator:
    """The noise generator of one image's output-completeness copy for its ``rank``-th top
    prototype: a function of ``evaluate.seed``, the image id and the rank only (not of
    the batch, the rank of the process or the worker)."""
    return np.random.default_rng((int(seed), int(image_id), int(rank)))


def pixels_in_box(keep: Sequence[int], view: Sequence[int], height: int, width: int) -> np.ndarray:
    """(height, width) bool: the pixels of a view whose centre lies in the image box ``keep``.

    The view shows the image region ``view`` (inclusive x0, y0, x1, y1) stretched to
    height x width (:func:`pipeline.views.cut_view`; the full-image models' input is the
    view of the whole image). View column c has its centre at image x = x0 + (c + 0.5) *
    (x1 - x0 + 1) / width - 0.5, likewise rows; it is inside ``keep`` (inclusive
    kx0, ky0, kx1, ky1) when kx0 - 0.5 <= x < kx1 + 0.5 and ky0 - 0.5 <= y < ky1 + 0.5.
    A view of its own size (no resize) is inside exactly on kx0 <= c <= kx1.
    """
    x0, y0, x1, y1 = (int(v) for v in view)
    kx0, ky0, kx1, ky1 = (int(v) for v in keep)
    xs = x0 + (np.arange(width) + 0.5) * (x1 - x0 + 1) / width - 0.5
    ys = y0 + (np.arange(height) + 0.5) * (y1 - y0 + 1) / height - 0.5
    cols = (xs >= kx0 - 0.5) & (xs < kx1 + 0.5)
    rows = (ys >= ky0 - 0.5) & (ys < ky1 + 0.5)
    return rows[:, None] & cols[None, :]


def noise_outside_box(
    shape: tuple[int, int, int, int],
    views: np.ndarray,
    keep: Optional[Sequence[int]],
    std: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Gaussian noise N(0, std^2) for a model input of views, zero inside the box ``keep``.

    The reference's ``add_gaussian_noise`` (output completeness): noise added to the
    normalised model input everywhere except in the bounding box of the explanation.

    Args:
        shape: (V, C, H, W) the input's views (the full-image models: V = 1).
        views: (V, 4) inclusive image boxes the views show (:func:`pixels_in_box`).
        keep: inclusive (x0, y0, x1, y1) image box kept free of noise; None: noise
            everywhere.
        std: standard deviation, in the normalised input's units.
        rng: the generator (:func:`completeness_rng`).

    Returns:
        (V, C, H, W) float32.
    """
    noise = rng.normal(0.0, std, shape).astype(np.float32)
    if keep is not None:
        for v, view in enumerate(views):
            noise[v][:, pixels_in_box(keep, view, shape[2], shape[3])] = 0.0
    return noise
