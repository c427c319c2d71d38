"""NIQE, the "completely blind" image quality analyzer, MATLAB-compatible.

Reference: A. Mittal, R. Soundararajan and A. C. Bovik, "Making a 'completely blind' image quality
analyzer", IEEE Signal Processing Letters 20(3), 2013. This follows the authors' MATLAB release
(``computequality.m``): 96x96 blocks, two scales, 18 features per block and scale, a multivariate
Gaussian fitted to the image's block features and compared with the pristine model shipped in
``data/niqe_pris_params.npz``. Lower is better. As in the release, the MSCN coefficients are fitted
with the same asymmetric-GGD moment matcher as the paired products, keeping the shape and the mean
of the two scales (the GGD fit of Eq. 2-3 for a symmetric distribution); the half scale uses
MATLAB's antialiased bicubic ``imresize``, reimplemented here.

The image is first reduced to BT.601 luma (MATLAB ``rgb2ycbcr`` Y on [0, 1] RGB, scaled to
[16, 235], not rounded), the full image, no border crop. Everything is float64.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

BLOCK_SIZE = 96
_PARAMS_PATH = Path(__file__).resolve().parent / "data" / "niqe_pris_params.npz"
# Shifts of the four paired products (horizontal, vertical, two diagonals), as MATLAB circshift.
_PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an 8-bit RGB image, as MATLAB ``rgb2ycbcr`` on ``im2double`` input, times 255.

    Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1], so Y is in [16, 235]
    (ITU-R BT.601 studio range). Y is *not* rounded to integers: the NIQE check values of the
    sample photos (``samples/README.md``) are reproduced only with unrounded luma (rounding moves NIQE
    by up to about 0.05 on those photos).

    Args:
        rgb: uint8 array (H, W, 3), RGB order.

    Returns:
        float64 array (H, W), values in [16, 235].
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {rgb.dtype} {rgb.shape}")
    c = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * c[..., 0] + 128.553 * c[..., 1] + 24.966 * c[..., 2]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' bicubic kernel with a = -0.5, the kernel of MATLAB ``imresize(..., 'bicubic')``."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return near + far


def _resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """Dense (out_len, in_len) matrix of MATLAB ``imresize`` bicubic weights along one axis.

    Mirrors MATLAB's ``contributions``: output pixel x (1-based) samples the input at
    u = x / scale + (1 - 1 / scale) / 2; when shrinking with antialiasing the kernel is stretched by
    1 / scale; weights are normalised per output pixel; out-of-range taps reflect symmetrically.

    Args:
        in_len: input length along the axis.
        out_len: output length along the axis.
        scale: scale factor (out / in as requested, e.g. 0.5).
        antialias: stretch the kernel when scale < 1 (MATLAB's default).

    Returns:
        float64 matrix W such that resized = W @ signal.
    """
    width = 4.0
    if scale < 1.0 and antialias:
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
        width = width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric padding: the sequence 1..n, n..1 repeated (MATLAB's "aux" index vector).
    period = 2 * in_len
    i0 = np.mod(idx.astype(np.int64) - 1, period)
    i0 = np.where(i0 < in_len, i0, period - 1 - i0)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], i0.shape)
    np.add.at(mat, (rows, i0), weights)
    return mat


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` (bicubic, antialiasing on) for a 2-D float image.

    Output size is ceil(scale * input size), as MATLAB computes it; rows are resized first, then
    columns, MATLAB's order for equal scales. No clipping or rounding (MATLAB on double input).

    Args:
        img: float array (H, W).
        scale: positive scale factor.

    Returns:
        float64 array (ceil(scale * H), ceil(scale * W)).
    """
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    out_h, out_w = int(np.ceil(scale * h)), int(np.ceil(scale * w))
    rows = _resize_matrix(h, out_h, scale)
    cols = _resize_matrix(w, out_w, scale)
    return (rows @ img) @ cols.T


@functools.lru_cache(maxsize=1)
def _load_pristine() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pristine model (mu 36, cov 36x36) and the 7x7 Gaussian window of the MATLAB release."""
    with np.load(_PARAMS_PATH) as data:
        mu = np.asarray(data["mu_pris_param"], dtype=np.float64).reshape(-1)
        cov = np.asarray(data["cov_pris_param"], dtype=np.float64)
        window = np.asarray(data["gaussian_window"], dtype=np.float64)
    return mu, cov, window


@functools.lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    """Shape grid 0.2:0.001:10 and its ratio Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) (AGGD fit)."""
    from scipy.special import gamma

    alphas = np.arange(200, 10001, dtype=np.float64) / 1000.0  # exact grid, as MATLAB's colon
    ratio = gamma(2.0 / alphas) ** 2 / (gamma(1.0 / alphas) * gamma(3.0 / alphas))
    return alphas, ratio


def _aggd_fit(x: np.ndarray) -> tuple[float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian (MATLAB ``estimateaggdparam``).

    Reference: N.-E. Lasmar, Y. Stitou and Y. Berthoumieu, "Multiscale skewed heavy tailed model for
    texture analysis", ICIP 2009; used for all NIQE features (Mittal et al. 2013).

    Args:
        x: samples (any shape).

    Returns:
        (alpha, beta_left, beta_right). Degenerate blocks (no negative or no positive samples) give
        NaN betas and alpha = 0.2, exactly as MATLAB's ``min`` over an all-NaN vector does; NIQE's
        nanmean / complete-row covariance then handle them as the release does.
    """
    from scipy.special import gamma

    alphas, ratio = _aggd_table()
    x = x.ravel()
    neg, pos = x[x < 0], x[x > 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        left_std = np.sqrt(np.sum(neg * neg) / neg.size)
        right_std = np.sqrt(np.sum(pos * pos) / pos.size)
        g = left_std / right_std
        r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x * x)
        r_norm = r_hat * (g**3 + 1.0) * (g + 1.0) / (g**2 + 1.0) ** 2
        alpha = float(alphas[np.argmin((ratio - r_norm) ** 2)])
    c = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, float(left_std * c), float(right_std * c)


def _block_features(block: np.ndarray) -> list[float]:
    """The 18 NIQE features of one block of MSCN coefficients (MATLAB ``computefeature``).

    Args:
        block: MSCN coefficients of one block.

    Returns:
        [alpha, mean beta] of the MSCN coefficients, then for each of the 4 paired products
        [alpha, mean, beta_left, beta_right] of its asymmetric GGD fit.
    """
    from scipy.special import gamma

    alpha, bl, br = _aggd_fit(block)
    feats = [alpha, (bl + br) / 2.0]
    for shift in _PAIR_SHIFTS:
        # Circular shift inside the block, as MATLAB circshift on the block.
        pair = block * np.roll(block, shift, axis=(0, 1))
        alpha, bl, br = _aggd_fit(pair)
        mean = (br - bl) * gamma(2.0 / alpha) / gamma(1.0 / alpha)
        feats.extend([alpha, mean, bl, br])
    return feats


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (Mittal et al. 2013, Eq. 1), C = 1."""
    from scipy.ndimage import correlate

    # mode="nearest" is MATLAB imfilter's 'replicate' padding.
    mu = correlate(img, window, mode="nearest")
    sigma = np.sqrt(np.abs(correlate(img * img, window, mode="nearest") - mu * mu))
    return (img - mu) / (sigma + 1.0)


def niqe_features(luma: np.ndarray, block_size: int = BLOCK_SIZE) -> np.ndarray:
    """Per-block NIQE features of a luma image at two scales.

    Args:
        luma: float array (H, W), values in [0, 255] (e.g. from :func:`rgb_to_y`). Cropped to a
            whole number of blocks from the top-left, as the MATLAB release does.
        block_size: block side at the first scale (96 in the release; the second scale uses half).

    Returns:
        float64 array (num_blocks, 36): 18 features at full scale, then 18 at half scale.
    """
    _, _, window = _load_pristine()
    img = np.asarray(luma, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D luma image, got shape {img.shape}")
    nbh, nbw = img.shape[0] // block_size, img.shape[1] // block_size
    if nbh == 0 or nbw == 0:
        raise ValueError(f"NIQE needs at least {block_size}x{block_size} pixels, got {img.shape}")
    img = img[: nbh * block_size, : nbw * block_size]
    per_scale = []
    for scale in (1, 2):
        mscn = _mscn(img, window)
        b = block_size // scale
        # Column-major block order, as MATLAB blkproc + reshape (order does not change the result).
        feats = [
            _block_features(mscn[i * b : (i + 1) * b, j * b : (j + 1) * b])
            for j in range(nbw)
            for i in range(nbh)
        ]
        per_scale.append(np.asarray(feats, dtype=np.float64))
        if scale == 1:
            img = imresize(img, 0.5)
    return np.concatenate(per_scale, axis=1)


def niqe_from_luma(luma: np.ndarray) -> float:
    """NIQE of a luma image (Mittal et al. 2013, Eq. 10). Lower is better.

    Args:
        luma: float array (H, W), values in [0, 255]; at least 96x96.

    Returns:
        The NIQE score: Mahalanobis-like distance between the image's MVG fit and the pristine one.
    """
    mu_p, cov_p, _ = _load_pristine()
    feats = niqe_features(luma)
    # nanmean per feature; covariance over complete rows only (MATLAB nanmean / nancov).
    mu_d = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    if complete.shape[0] > 1:
        cov_d = np.cov(complete, rowvar=False)
    else:  # MATLAB cov of a single observation is zero.
        cov_d = np.zeros_like(cov_p)
    diff = mu_p - mu_d
    inv = np.linalg.pinv((cov_p + cov_d) / 2.0)
    return float(np.sqrt(diff @ inv @ diff))


def niqe(rgb: np.ndarray) -> float:
    """NIQE of an 8-bit RGB image on its BT.601 luma, full image, no border crop. Lower is better.

    Reference: Mittal, Soundararajan and Bovik, IEEE SPL 2013 (official MATLAB release).

    Args:
        rgb: uint8 array (H, W, 3), RGB; at least 96x96.

    Returns:
        The NIQE score (float).
    """
    return niqe_from_luma(rgb_to_y(rgb))
