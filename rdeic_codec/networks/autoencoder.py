"""The latent autoencoder and the feature RDEIC compresses.

Two kinds, chosen by the ``type`` field of the config's ``vae`` section:

* ``"kl"`` (the default, and the paper profile): diffusers' ``AutoencoderKL``, Stable Diffusion's VAE.
* ``"shuffle"`` (the small profile): :class:`ShuffleAutoencoder`, a convolutional autoencoder with no
  convolution at full resolution, built for training and running on a CPU.

RDEIC's analysis transform reads the autoencoder encoder's feature map just before its last convolution
(for SD: after the final norm and SiLU), scaled by 0.18215 (method file, section 1.1). Code outside this
module reaches either kind only through :func:`encoder_feature`, :func:`latent_from_feature` and
:func:`decode_latent`.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn


class ShuffleResBlock(nn.Module):
    """conv3×3 → LeakyReLU(0.1) → conv3×3, plus the input. No normalisation: on a CPU group norm costs
    more time than it gives at these sizes, and the autoencoder trains stably without it."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class ShuffleAutoencoder(nn.Module):
    """An autoencoder whose first and last layers rearrange pixels instead of convolving them.

    Encoder: space-to-depth by 4 (3 → 48 channels at 1/4) → conv → residual blocks at 1/4 → stride-2 conv
    → residual blocks at 1/8 → LeakyReLU (this is the *feature* RDEIC compresses) → conv to the latent.
    Decoder: the mirror image, ending in a pixel shuffle by 4.

    Every convolution runs at 1/4 or 1/8 of the image's resolution, so a training step costs about an
    eighth of one with full-resolution convolutions (issue 11 measured 0.33 against 2.5 s per step on the
    project's 2-core CPU) and the decoder is fast where users wait. The latent is deterministic (no
    posterior): RDEIC's later stages use the posterior mean in any case.

    Args:
        config: the ``vae`` section: ``in_channels`` (3), ``latent_channels``, ``channels`` [C at 1/4,
            C at 1/8], ``blocks`` [residual blocks at 1/4, at 1/8] (each side), ``scaling_factor``
            (1/std of the latents, set after training so the scaled latent has unit variance).
    """

    def __init__(self, config: dict):
        super().__init__()
        cin, latent = config["in_channels"], config["latent_channels"]
        c4, c8 = config["channels"]
        n4, n8 = config["blocks"]
        act = nn.LeakyReLU(0.1)
        self.scaling_factor = float(config.get("scaling_factor", 1.0))
        self.config_section = {k: v for k, v in config.items() if k != "scaling_factor"}
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(4), nn.Conv2d(cin * 16, c4, 3, padding=1),
            *[ShuffleResBlock(c4) for _ in range(n4)],
            nn.Conv2d(c4, c8, 3, stride=2, padding=1),
            *[ShuffleResBlock(c8) for _ in range(n8)],
            act,
        )
        self.encoder_out = nn.Conv2d(c8, latent, 3, padding=1)
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, c8, 3, padding=1),
            *[ShuffleResBlock(c8) for _ in range(n8)],
            nn.Conv2d(c8, 4 * c4, 1), nn.PixelShuffle(2),
            *[ShuffleResBlock(c4) for _ in range(n4)],
            act,
            nn.Conv2d(c4, cin * 16, 3, padding=1), nn.PixelShuffle(4),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder_out(self.encoder(image)))


def build_vae(vae_config: dict):
    """The autoencoder a ``vae`` config section describes (randomly initialised)."""
    config = dict(vae_config)
    kind = config.pop("type", "kl")
    if kind == "shuffle":
        return ShuffleAutoencoder(vae_config)
    if kind != "kl":
        raise ValueError(f"unknown autoencoder type {kind!r}")
    from .diffusers_import import import_module

    return import_module("diffusers.models.autoencoders.autoencoder_kl").AutoencoderKL(**config)


def scaling_factor(vae) -> float:
    return vae.scaling_factor if isinstance(vae, ShuffleAutoencoder) else vae.config.scaling_factor


def set_scaling_factor(vae, value: float) -> None:
    if isinstance(vae, ShuffleAutoencoder):
        vae.scaling_factor = float(value)
    else:
        vae.register_to_config(scaling_factor=float(value))


def vae_config(vae) -> dict:
    """The ``vae`` config section that rebuilds ``vae`` (with its current scaling factor)."""
    if isinstance(vae, ShuffleAutoencoder):
        return dict(vae.config_section, scaling_factor=vae.scaling_factor)
    keys = ("in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
            "down_block_types", "up_block_types", "norm_num_groups", "sample_size", "scaling_factor",
            "mid_block_add_attention")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vae.config.items() if k in keys}


def encoder_feature(vae, image: torch.Tensor) -> torch.Tensor:
    """The autoencoder encoder's feature before its last convolution.

    Args:
        vae: an autoencoder from :func:`build_vae`.
        image: (B, 3, H, W) in [-1, 1], H and W multiples of 8.

    Returns:
        (B, C, H/8, W/8) feature (not yet multiplied by the feature scale).
    """
    if isinstance(vae, ShuffleAutoencoder):
        return vae.encoder(image)
    enc = vae.encoder
    h = enc.conv_in(image)
    for block in enc.down_blocks:
        h = block(h)
    h = enc.mid_block(h)
    return enc.conv_act(enc.conv_norm_out(h))


def encoder_feature_maps(vae, image: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's activations at each resolution it works at, finest first: for the shuffle
    autoencoder, after the residual blocks at 1/4 and the feature at 1/8; for the KL one, after each
    down block. Stage 2's feature distance (:func:`..training.losses.feature_distance`) compares them.

    Args:
        vae: an autoencoder from :func:`build_vae`.
        image: (B, 3, H, W) in [-1, 1], H and W multiples of 8.
    """
    maps = []
    if isinstance(vae, ShuffleAutoencoder):
        h = image
        for layer in vae.encoder:
            if isinstance(layer, nn.Conv2d) and layer.stride == (2, 2):
                maps.append(h)  # the last activation at 1/4, before the encoder steps down
            h = layer(h)
        return maps + [h]
    h = vae.encoder.conv_in(image)
    for block in vae.encoder.down_blocks:
        h = block(h)
        maps.append(h)
    return maps


def latent_moments(vae, feature: torch.Tensor):
    """(mean, logvar) of the KL autoencoder's posterior, unscaled; (latent, None) for the shuffle one."""
    if isinstance(vae, ShuffleAutoencoder):
        return vae.encoder_out(feature), None
    moments = vae.encoder.conv_out(feature)
    if vae.quant_conv is not None:
        moments = vae.quant_conv(moments)
    return moments.chunk(2, dim=1)


def latent_from_feature(vae, feature: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """Finish the encoder from :func:`encoder_feature`: the scaled latent (mean, or a posterior sample
    for the KL autoencoder)."""
    mean, logvar = latent_moments(vae, feature)
    if sample and logvar is not None:
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        mean = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean * scaling_factor(vae)


def encode_image(vae, image: torch.Tensor) -> torch.Tensor:
    """Image in [-1, 1] → scaled latent (the posterior mean)."""
    return latent_from_feature(vae, encoder_feature(vae, image))


def decode_latent(vae, latent: torch.Tensor) -> torch.Tensor:
    """Scaled latent → image in [-1, 1] (not clamped), float32 even under a bfloat16 autocast (training
    losses compare it with the photo), otherwise in the decoder's own dtype."""
    if isinstance(vae, ShuffleAutoencoder):
        image = vae.decoder(latent / vae.scaling_factor)
    else:
        image = vae.decode(latent / vae.config.scaling_factor).sample
    return image.float() if torch.is_autocast_enabled(image.device.type) else image


def decoder_modules(vae) -> list[nn.Module]:
    """The modules that make up the decoder (what the decoder-refinement stage trains)."""
    if isinstance(vae, ShuffleAutoencoder):
        return [vae.decoder]
    return [vae.decoder] + ([vae.post_quant_conv] if vae.post_quant_conv is not None else [])


def save_autoencoder(vae, folder: str) -> None:
    """Write ``config.json`` (the ``vae`` section) and ``autoencoder.safetensors`` to ``folder``."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    config = vae_config(vae)
    if not isinstance(vae, ShuffleAutoencoder):
        config["type"] = "kl"
    save_file({k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()},
              os.path.join(folder, "autoencoder.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def load_autoencoder(folder: str):
    """Read what :func:`save_autoencoder` wrote."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    vae = build_vae(config)
    vae.load_state_dict(load_file(os.path.join(folder, "autoencoder.safetensors")))
    return vae
