"""Tests of NIQE, PSNR and MS-SSIM (rdeic_codec.evaluation.niqe / .metrics)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from conftest import sample_photo
from rdeic_codec.evaluation import metrics, niqe

# Check values of the shipped CC0 sample photos (samples/README.md: MATLAB-compatible NIQE, BT.601 luma, no crop).
NIQE_CHECK = {"gb82_city.png": 3.321, "gb82_flowers.png": 2.988, "gb82_grass.png": 5.068}


def _photo(name: str) -> np.ndarray:
    with Image.open(sample_photo(name)) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def _noisy(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(x + rng.normal(0.0, sigma, x.shape)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- NIQE


@pytest.mark.parametrize("name", sorted(NIQE_CHECK))
def test_niqe_check_values(name):
    assert niqe.niqe(_photo(name)) == pytest.approx(NIQE_CHECK[name], abs=1e-3)


def _blocky(x: np.ndarray, b: int = 8) -> np.ndarray:
    h, w = x.shape[0] // b * b, x.shape[1] // b * b
    means = x[:h, :w].astype(np.float64).reshape(h // b, b, w // b, b, 3).mean(axis=(1, 3))
    return np.rint(np.repeat(np.repeat(means, b, 0), b, 1)).astype(np.uint8)


def _blurred(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(x.astype(np.float64), sigma=(sigma, sigma, 0), mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _jpeg(x: np.ndarray, quality: int = 5) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=quality)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"))


@pytest.mark.parametrize("name", ["gb82_city.png", "gb82_flowers.png"])
def test_niqe_prefers_sharp_over_degraded(name):
    sharp = _photo(name)
    score = niqe.niqe(sharp)
    for degraded in (_blurred(sharp), _blocky(sharp), _jpeg(sharp)):
        assert niqe.niqe(degraded) > score + 1.0


def test_rgb_to_y_bt601():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    y = niqe.rgb_to_y(rgb)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])


def test_gaussian_window_is_matlab_fspecial():
    # fspecial('gaussian', 7, 7/6): exp(-(x^2 + y^2) / (2 sigma^2)) on -3..3, normalised.
    t = np.arange(-3, 4, dtype=np.float64)
    g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * (7 / 6) ** 2))
    _, _, window = niqe._load_pristine()
    np.testing.assert_allclose(window, g / g.sum(), atol=1e-7)


def test_imresize_half_matches_bicubic_properties():
    # Output size ceil(h/2); constants are kept; a linear ramp i (1-based) is sampled at the
    # MATLAB source position u = 2x - 0.5 away from the borders (cubic kernels reproduce lines).
    ramp = np.tile(np.arange(1, 41, dtype=np.float64)[:, None], (1, 7))
    out = niqe.imresize(ramp, 0.5)
    assert out.shape == (20, 4)
    x = np.arange(1, 21)
    np.testing.assert_allclose(out[3:-3, 0], (2 * x - 0.5)[3:-3], atol=1e-12)
    np.testing.assert_allclose(niqe.imresize(np.full((9, 13), 7.5), 0.5), 7.5, atol=1e-12)


def test_niqe_rejects_small_images():
    with pytest.raises(ValueError):
        niqe.niqe(np.zeros((95, 200, 3), np.uint8))


# ---------------------------------------------------------------- PSNR


def test_psnr_formula():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    y = _noisy(x, 12.0)
    mse = np.mean((x.astype(np.float64) - y) ** 2)
    assert metrics.psnr(x, y) == pytest.approx(20 * math.log10(255) - 10 * math.log10(mse))
    # A constant offset of 5 everywhere: MSE 25.
    z = np.full((8, 8, 3), 100, np.uint8)
    assert metrics.psnr(z, z + 5) == pytest.approx(10 * math.log10(255**2 / 25))
    assert metrics.psnr(x, x) == math.inf


def test_psnr_input_checks():
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError):
        metrics.psnr(a, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError):
        metrics.psnr(a.astype(np.float32), a)


# ---------------------------------------------------------------- MS-SSIM


def _ms_ssim_torch(x: np.ndarray, y: np.ndarray) -> float:
    """Independent MS-SSIM with torch conv2d / avg_pool2d (the pytorch_msssim convention)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = np.arange(11, dtype=np.float64) - 5
    g = np.exp(-(t**2) / (2 * 1.5**2))
    g = torch.from_numpy(g / g.sum())
    wh, ww = g.view(1, 1, 11, 1).repeat(3, 1, 1, 1), g.view(1, 1, 1, 11).repeat(3, 1, 1, 1)

    def blur(v):
        return F.conv2d(F.conv2d(v, wh, groups=3), ww, groups=3)

    X = torch.from_numpy(x.astype(np.float64)).permute(2, 0, 1)[None]
    Y = torch.from_numpy(y.astype(np.float64)).permute(2, 0, 1)[None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=torch.float64)
    vals = []
    for level in range(5):
        mx, my = blur(X), blur(Y)
        sxx, syy, sxy = blur(X * X) - mx**2, blur(Y * Y) - my**2, blur(X * Y) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        ssim = (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs
        if level < 4:
            vals.append(torch.relu(cs.mean(dim=(2, 3))))
            pad = [s % 2 for s in X.shape[2:]]
            X, Y = F.avg_pool2d(X, 2, padding=pad), F.avg_pool2d(Y, 2, padding=pad)
        else:
            vals.append(torch.relu(ssim.mean(dim=(2, 3))))
    per_channel = torch.prod(torch.stack(vals) ** weights.view(-1, 1, 1), dim=0)
    return float(per_channel.mean())


@pytest.mark.parametrize("shape", [(192, 176), (171, 203)])  # even and odd sides (padding)
def test_ms_ssim_matches_independent_torch(shape):
    x = _photo("gb82_city.png")[: shape[0], : shape[1]]
    y = _noisy(x, 15.0)
    assert metrics.ms_ssim(x, y) == pytest.approx(_ms_ssim_torch(x, y), abs=1e-9)


def test_ms_ssim_identity_and_noise_monotone():
    x = _photo("gb82_flowers.png")[:200, :200]
    assert metrics.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    values = [metrics.ms_ssim(x, _noisy(x, s)) for s in (3.0, 10.0, 30.0)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0
    y = _noisy(x, 10.0)
    assert metrics.ms_ssim(x, y) == pytest.approx(metrics.ms_ssim(y, x), abs=1e-12)


def test_ms_ssim_small_image_rule():
    assert metrics.ms_ssim_levels(161, 500) == 5
    assert metrics.ms_ssim_levels(160, 500) == 4
    assert metrics.ms_ssim_levels(11, 11) == 1
    assert metrics.ms_ssim_levels(10, 64) == 0
    x = _photo("gb82_grass.png")[:100, :120]
    y = _noisy(x, 10.0)
    v = metrics.ms_ssim(x, y)  # 3 scales, renormalised weights
    assert 0.0 < v < 1.0
    with pytest.raises(ValueError):
        metrics.ms_ssim(x, y, allow_fewer_scales=False)
    with pytest.raises(ValueError):
        metrics.ms_ssim(x[:10], y[:10])


def test_metric_modules_import_only_numpy():
    import subprocess
    import sys

    code = (
        "import sys, rdeic_codec.evaluation.metrics, rdeic_codec.evaluation.niqe;"
        "print(','.join(m for m in ('scipy', 'torch', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
