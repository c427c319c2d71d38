"""Full-reference distortion metrics: PSNR and MS-SSIM on 8-bit RGB images.

MS-SSIM follows Z. Wang, E. P. Simoncelli and A. C. Bovik, "Multiscale structural similarity for
image quality assessment", Asilomar 2003, with the conventions of the widely used ``pytorch_msssim``
package (``ms_ssim(x, y, data_range=255)``): 11x11 Gaussian window with sigma 1.5 applied as a
separable "valid" filter, K1 = 0.01, K2 = 0.03, 2x2 average pooling between scales (an odd side is
zero-padded by one pixel on each side and the padding counts in the average), negative
per-scale values clamped to 0, MS-SSIM computed per RGB channel and averaged over channels.

Only numpy is imported at module import time (scipy is imported lazily).
"""

from __future__ import annotations

import math

import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, Table 1 / Eq. 7
WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _check_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) RGB arrays, got {x.shape}")
    if x.dtype != np.uint8 or y.dtype != np.uint8:
        raise ValueError(f"expected uint8 arrays, got {x.dtype} and {y.dtype}")
    return x, y


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """PSNR in dB of two 8-bit RGB images, one MSE over all pixels and channels.

    PSNR = 10 log10(255^2 / MSE), the usual definition in learned compression (e.g. CompressAI).

    Args:
        x: uint8 array (H, W, 3), the reference.
        y: uint8 array (H, W, 3), the reconstruction.

    Returns:
        PSNR in dB; ``math.inf`` for identical images.
    """
    x, y = _check_pair(x, y)
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def ms_ssim_levels(height: int, width: int, max_levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Number of MS-SSIM scales an image of this size supports.

    Rule (that of ``pytorch_msssim``, which demands min side > (11 - 1) * 2**4 = 160 for 5 scales):
    L scales are used when min(height, width) > 10 * 2**(L - 1), so the coarsest scale still holds
    a whole 11x11 window. Images of at least 161 px on the short side get the standard 5 scales.

    Args:
        height: image height.
        width: image width.
        max_levels: upper bound (5, the standard).

    Returns:
        The number of scales, 0 when even one 11x11 window does not fit (side < 11).
    """
    side = min(height, width)
    levels = 0
    while levels < max_levels and side > (WIN_SIZE - 1) * 2**levels:
        levels += 1
    return levels


def _gaussian_1d(size: int = WIN_SIZE, sigma: float = WIN_SIGMA) -> np.ndarray:
    coords = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter on (H, W, C), keeping only fully covered pixels ("valid")."""
    from scipy.ndimage import correlate1d

    r = len(g) // 2
    out = correlate1d(img, g, axis=0, mode="constant")[r:-r]
    return correlate1d(out, g, axis=1, mode="constant")[:, r:-r]


def _ssim_cs(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean SSIM and mean contrast-structure term (Wang et al. 2004, Eq. 13)."""
    g = _gaussian_1d()
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mu_x * mu_x
    syy = _filter_valid(y * y, g) - mu_y * mu_y
    sxy = _filter_valid(x * y, g) - mu_x * mu_y
    cs_map = (2.0 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.mean(axis=(0, 1)), cs_map.mean(axis=(0, 1))


def _downsample(img: np.ndarray) -> np.ndarray:
    """2x2 average pooling; an odd side gets one zero row/column on each side (counted)."""
    ph, pw = img.shape[0] % 2, img.shape[1] % 2
    if ph or pw:
        img = np.pad(img, ((ph, ph), (pw, pw), (0, 0)))
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    img = img[:h, :w]
    return 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])


def ms_ssim(x: np.ndarray, y: np.ndarray, allow_fewer_scales: bool = True) -> float:
    """MS-SSIM of two 8-bit RGB images on [0, 255], averaged over the R, G, B channels.

    Reference: Wang, Simoncelli and Bovik, Asilomar 2003; conventions of ``pytorch_msssim``
    ``ms_ssim(data_range=255)`` (see the module docstring).

    Small images: an image whose short side is <= 160 px cannot hold 5 scales. With
    ``allow_fewer_scales`` (the default) it uses L = :func:`ms_ssim_levels` scales and the first L
    standard weights renormalised to sum to 1; such values are not comparable with 5-scale values.
    Otherwise (or when L = 0, side < 11) a ``ValueError`` is raised.

    Args:
        x: uint8 array (H, W, 3), the reference.
        y: uint8 array (H, W, 3), the reconstruction.
        allow_fewer_scales: use fewer scales on small images instead of raising.

    Returns:
        MS-SSIM in [0, 1]; 1 for identical images.
    """
    x, y = _check_pair(x, y)
    levels = ms_ssim_levels(x.shape[0], x.shape[1])
    if levels == 0 or (levels < len(MS_SSIM_WEIGHTS) and not allow_fewer_scales):
        raise ValueError(
            f"MS-SSIM needs a short side > 160 px for 5 scales (> 10 px for one); got {x.shape[:2]}"
        )
    weights = np.asarray(MS_SSIM_WEIGHTS[:levels], dtype=np.float64)
    if levels < len(MS_SSIM_WEIGHTS):
        # The published weights sum to 1.0001 and are used as is; only truncated sets are rescaled.
        weights = weights / weights.sum()
    xf, yf = x.astype(np.float64), y.astype(np.float64)
    factors = []
    for level in range(levels):
        ssim_c, cs_c = _ssim_cs(xf, yf, 255.0)
        if level < levels - 1:
            factors.append(np.maximum(cs_c, 0.0))  # relu, as pytorch_msssim
            xf, yf = _downsample(xf), _downsample(yf)
        else:
            factors.append(np.maximum(ssim_c, 0.0))
    per_channel = np.prod(np.stack(factors) ** weights[:, None], axis=0)
    return float(per_channel.mean())
