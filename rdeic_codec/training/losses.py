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
