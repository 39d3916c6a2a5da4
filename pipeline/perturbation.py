"""The perturbed copy of a test image (evaluate: stability, PSC, PRC, CRC).

Colour jitter with fixed factors, Gaussian noise, box blur and JPEG re-encoding, in this
order (the reference's continuity pipeline); the noise of each image is seeded by
``evaluate.seed`` and the image id, so a rerun perturbs every image the same way. The
colour jitter runs on one torch thread (the contrast factor's image mean is a reduction,
whose float sum depends on how many threads split it), so the copy is the same in the
main process and in a single-threaded DataLoader worker.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

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
