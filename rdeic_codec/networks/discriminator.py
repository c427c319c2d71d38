"""A conditional patch discriminator for stage 2's adversarial term (issue 22; training only).

HiFiC (Mentzer et al., "High-Fidelity Generative Image Compression", NeurIPS 2020) makes a learned
codec's output realistic with a small discriminator that judges image patches *given the decoder's
latent*: it cannot prefer any sharp image, only one that agrees with what was sent. Here the condition
is z_c, which the relay steps start from. The paper behind this codec uses LPIPS for realism, whose
backbone cannot be had offline.

The critic sees the image's luma alone: with RGB (HiFiC's choice) it told the blur from the photo by its
colour, and the steps learned to saturate colours instead of adding detail (docs/training.md, session
11). Three stride-2 convolutions take the luma to the latent's 1/8 grid, z_c joins there, and two more
convolutions give one logit per 8×8 patch. Spectral normalisation (Miyato et al., 2018) on every
convolution keeps its gradients bounded, as in HiFiC. Never part of a written model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """Logits (B, 1, H/8, W/8) that each 8×8 patch of ``image`` (RGB) is a real photo's, given ``z_c``.

    Args:
        latent_channels: channels of z_c.
        channels: widths of the three downsampling convolutions.
    """

    def __init__(self, latent_channels: int, channels: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        act = nn.LeakyReLU(0.2)
        layers, cin = [], 1
        for cout in channels:
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), act]
            cin = cout
        self.image = nn.Sequential(*layers)
        self.head = nn.Sequential(
            spectral_norm(nn.Conv2d(cin + latent_channels, cin, 3, padding=1)), act,
            spectral_norm(nn.Conv2d(cin, 1, 1)),
        )

    def forward(self, image: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
        luma = (LUMA.to(image) * image).sum(1, keepdim=True)
        return self.head(torch.cat([self.image(luma), z_c], dim=1))


LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # BT.601
