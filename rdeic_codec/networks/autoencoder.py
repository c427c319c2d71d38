"""The latent autoencoder (diffusers ``AutoencoderKL``) and the feature RDEIC compresses.

RDEIC's analysis transform reads the VAE encoder's feature map just before its last convolution
(after the final norm and SiLU), scaled by 0.18215 (method file, section 1.1).
"""

from __future__ import annotations

import torch


def build_vae(vae_config: dict):
    from .diffusers_import import import_module

    return import_module("diffusers.models.autoencoders.autoencoder_kl").AutoencoderKL(**vae_config)


def encoder_feature(vae, image: torch.Tensor) -> torch.Tensor:
    """The VAE encoder's feature before ``conv_out``.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        image: (B, 3, H, W) in [-1, 1], H and W multiples of 8.

    Returns:
        (B, C, H/8, W/8) feature (not yet multiplied by the feature scale).
    """
    enc = vae.encoder
    h = enc.conv_in(image)
    for block in enc.down_blocks:
        h = block(h)
    h = enc.mid_block(h)
    return enc.conv_act(enc.conv_norm_out(h))


def latent_from_feature(vae, feature: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """Finish the VAE encoder from :func:`encoder_feature`: the scaled latent (mean or a posterior sample)."""
    moments = vae.encoder.conv_out(feature)
    if vae.quant_conv is not None:
        moments = vae.quant_conv(moments)
    mean, logvar = moments.chunk(2, dim=1)
    if sample:
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        mean = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean * vae.config.scaling_factor


def decode_latent(vae, latent: torch.Tensor) -> torch.Tensor:
    """Scaled latent → image in [-1, 1] (not clamped)."""
    return vae.decode(latent / vae.config.scaling_factor).sample
