"""Validation with real bits: range-code a few validation images with the current weights.

The training loss prices y with noise-based likelihoods (method file, section 2). At these rates that
proxy charges every near-deterministic element of y a fraction of a bit that the range coder does not
spend (it codes round(y − μ) = 0 almost for free), so the training bpp sits far above the bpp of real
files. Validation therefore also reports the size of real ``.rdc`` payloads, as ``rdeic encode`` writes
them.
"""

from __future__ import annotations

import numpy as np

from .data import list_images, load_rgb

PLACEHOLDER_ID = "00000000"  # a model in training has no id yet; the header needs one


def validation_images(folder: str, count: int = 4, side: int = 256) -> list[np.ndarray]:
    """Centre crops of the first ``count`` images of ``folder`` that are at least ``side`` pixels."""
    crops = []
    for path in list_images(folder):
        im = load_rgb(path)
        h, w = im.shape[:2]
        if min(h, w) >= side:
            y, x = (h - side) // 2, (w - side) // 2
            crops.append(np.ascontiguousarray(im[y : y + side, x : x + side]))
        if len(crops) == count:
            break
    return crops


def file_bpp(model, images: list[np.ndarray], lam: float) -> float:
    """Mean bits per pixel of the ``.rdc`` files :func:`rdeic_codec.codec.encode` writes for ``images``."""
    from .. import codec

    model.config.setdefault("model_id", PLACEHOLDER_ID)
    model._entropy_path = None  # the float64 copy of the entropy networks must follow the current weights
    try:
        sizes = [len(codec.encode(model, im, lam).data) * 8 / (im.shape[0] * im.shape[1]) for im in images]
    finally:
        model._entropy_path = None
    return float(np.mean(sizes)) if sizes else float("nan")
