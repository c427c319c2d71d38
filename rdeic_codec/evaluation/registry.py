"""The quality metrics ``rdeic eval`` reports, by name: the place to add LPIPS, DISTS, FID.

Two kinds of metric:

* :class:`ImageMetric`: one number per image and reconstruction, ``fn(original, reconstruction)``
  on uint8 (H, W, 3) RGB arrays. Each gets a column in ``results.csv`` / ``results.json``, an
  average per codec setting and a rate-quality plot. PSNR, MS-SSIM and NIQE are registered here;
  LPIPS and DISTS belong to this kind.
* :class:`SetMetric`: one number per codec setting over all images (FID, KID). It streams:
  ``new()`` returns an accumulator with ``add(original, reconstruction)`` (called once per image)
  and ``result() -> float``, so no image set is held in memory by the runner. Set metrics appear
  in the per-setting averages only (``summary`` in ``results.json``) and get a plot.

None of the learned metrics is shipped: they need network weights. With the weights at hand, write
a small module that registers the metric and pass it to ``rdeic eval --metrics-module NAME`` (it
is imported before the run; ``NAME`` is a module importable from the current directory or
``PYTHONPATH``). For example, with the ``lpips`` package and AlexNet weights on disk::

    # my_metrics.py
    import torch, lpips
    from rdeic_codec.evaluation.registry import ImageMetric, register

    _net = lpips.LPIPS(net="alex", model_path="/path/to/alex.pth").eval()

    def _lpips(original, reconstruction):
        t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            return float(_net(t(original), t(reconstruction)))

    register(ImageMetric("lpips", _lpips, higher_is_better=False, label="LPIPS"))

FID would be a :class:`SetMetric` whose accumulator collects Inception features of (patches of)
each reconstruction in ``add`` and computes the Frechet distance in ``result``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ImageMetric:
    """A per-image metric.

    Attributes:
        name: column name (lowercase, no spaces).
        fn: ``fn(original, reconstruction) -> float`` on uint8 (H, W, 3) RGB arrays of equal size.
        higher_is_better: the direction, for plots and readers.
        label: axis label for plots.
        reference: False for no-reference metrics (NIQE): ``fn`` ignores ``original``, and the
            metric is also reported for the originals themselves.
        min_side: images whose short side is smaller get no value (null) instead of an error.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool
    label: str = ""
    reference: bool = True
    min_side: int = 1

    def __call__(self, original: np.ndarray, reconstruction: np.ndarray) -> float | None:
        if min(reconstruction.shape[:2]) < self.min_side:
            return None
        return float(self.fn(original, reconstruction))


class Accumulator(Protocol):
    def add(self, original: np.ndarray, reconstruction: np.ndarray) -> None: ...

    def result(self) -> float | None: ...


@dataclass(frozen=True)
class SetMetric:
    """A metric over all images of one codec setting (FID-like), computed by streaming.

    Attributes:
        name: key in the summary (lowercase, no spaces).
        new: returns a fresh :class:`Accumulator` (``add(original, reconstruction)``, ``result()``).
        higher_is_better: the direction, for plots and readers.
        label: axis label for plots.
    """

    name: str
    new: Callable[[], Accumulator]
    higher_is_better: bool
    label: str = ""


METRICS: dict[str, ImageMetric | SetMetric] = {}


def register(metric: ImageMetric | SetMetric) -> None:
    """Add (or replace) a metric; every run after this reports it."""
    if not metric.name.replace("_", "").isalnum() or metric.name != metric.name.lower():
        raise ValueError(f"metric name {metric.name!r}: use lowercase letters, digits and '_'")
    METRICS[metric.name] = metric


def image_metrics() -> list[ImageMetric]:
    return [m for m in METRICS.values() if isinstance(m, ImageMetric)]


def set_metrics() -> list[SetMetric]:
    return [m for m in METRICS.values() if isinstance(m, SetMetric)]


def _psnr(original: np.ndarray, reconstruction: np.ndarray) -> float:
    from .metrics import psnr

    return psnr(original, reconstruction)


def _ms_ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    from .metrics import ms_ssim

    return ms_ssim(original, reconstruction)


def _niqe(original: np.ndarray, reconstruction: np.ndarray) -> float:
    from .niqe import niqe

    return niqe(reconstruction)


register(ImageMetric("psnr", _psnr, higher_is_better=True, label="PSNR (dB)"))
# Fewer than 5 scales below 161 px on the short side (see metrics.ms_ssim); the runner records
# the number of scales per image.
register(ImageMetric("ms_ssim", _ms_ssim, higher_is_better=True, label="MS-SSIM", min_side=11))
register(ImageMetric("niqe", _niqe, higher_is_better=False, label="NIQE (lower is better)",
                     reference=False, min_side=96))
