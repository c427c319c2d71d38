"""Losses shared by the training stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance between horizontal and vertical finite differences.

    Without a perceptual network (no LPIPS backbone exists offline), this term keeps edges and
    texture from being averaged away as plain L1/L2 losses do.
    """
    dxa, dxb = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    dya, dyb = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    return F.l1_loss(dxa, dxb) + F.l1_loss(dya, dyb)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), summed over latent elements, averaged over the batch."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_loss(a: torch.Tensor, b: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """1 − MS-SSIM (Wang et al., 2003) per image, differentiable, for images in [-1, 1].

    Stage 2 uses it where the authors use LPIPS (no LPIPS backbone can be had offline): it rewards
    local structure and contrast rather than the blur that a pixel MSE alone prefers. Training crops
    are small, so it runs on ``levels`` scales with the standard weights renormalised. Always in
    float32: the variances are differences of nearly equal means, which bfloat16 cannot resolve.
    """
    with torch.autocast(a.device.type, enabled=False):
        return _ms_ssim_loss(a.float(), b.float(), levels)


def _ms_ssim_loss(a: torch.Tensor, b: torch.Tensor, levels: int) -> torch.Tensor:
    a, b = (a + 1) / 2, (b + 1) / 2
    win = _gaussian_window(dtype=a.dtype).to(a.device)
    ch = a.shape[1]
    wx, wy = win.view(1, 1, 1, -1).repeat(ch, 1, 1, 1), win.view(1, 1, -1, 1).repeat(ch, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, wx, groups=ch), wy, groups=ch)

    c1, c2 = 0.01**2, 0.03**2
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=a.dtype, device=a.device)
    weights = weights / weights.sum()
    values = []
    for level in range(levels):
        mu_a, mu_b = blur(a), blur(b)
        saa = blur(a * a) - mu_a**2
        sbb = blur(b * b) - mu_b**2
        sab = blur(a * b) - mu_a * mu_b
        cs = (2 * sab + c2) / (saa + sbb + c2)
        if level == levels - 1:
            ssim = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs
            values.append(ssim.flatten(1).mean(1).clamp_min(1e-6))
        else:
            values.append(cs.flatten(1).mean(1).clamp_min(1e-6))
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    stacked = torch.stack(values, dim=1)
    return 1 - torch.prod(stacked ** weights, dim=1)


def feature_distance(vae, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance between two images in the autoencoder encoder's activations, per image.

    LPIPS's form (Zhang et al., CVPR 2018) without its learned weights, for which no backbone exists
    offline: each activation map (:func:`..networks.autoencoder.encoder_feature_maps`) is normalised to
    unit length over its channels at every position, and the squared differences are summed over
    channels and averaged over positions and maps. ``b`` is the reference and gets no gradient. With
    this project's small autoencoder it acted as one more fidelity term, not a realism signal
    (docs/training.md, session 21), so the profiles leave it off.
    """
    from ..networks.autoencoder import encoder_feature_maps

    with torch.no_grad():
        ref = encoder_feature_maps(vae, b)
    def unit(f):  # unit length over channels at every position
        f = f.float()
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-6)

    total = 0.0
    for fa, fb in zip(encoder_feature_maps(vae, a), ref):
        total = total + (unit(fa) - unit(fb)).pow(2).sum(1).flatten(1).mean(1)
    return total / len(ref)
