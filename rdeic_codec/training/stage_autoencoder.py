"""Stage "autoencoder": train the latent autoencoder of the small profile.

The paper uses Stable Diffusion's VAE; none can be downloaded here, so the small profile trains its
own. Loss: L1 + gradient-L1 (with a small KL term for a KL autoencoder, as SD's VAE; the adversarial
and LPIPS terms are left out because no LPIPS backbone exists offline).

The small profile's :class:`~rdeic_codec.networks.autoencoder.ShuffleAutoencoder` has no convolution at
full resolution. Measured on the 2-core CPU (issue 11, central 256×256 crops of the 66 validation
photos): the diffusers ``AutoencoderKL`` of the first shipped models (4 latent channels, full-resolution
convolutions) reached 20.6 dB after about 2,500 steps at 2.5 s each; the shuffle design runs a step
in about a tenth of that time and reached 30 dB in 38 CPU-minutes (docs/training.md).

A KL autoencoder reconstructs from the posterior mean: at initialisation the posterior's unit variance
swamps the latent, and with sampling the reconstruction stalled near 16.5 dB in the first 200 steps.
The later stages therefore use the posterior mean as "the latent of the image".
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ..networks.autoencoder import (build_vae, decode_latent, encode_image, encoder_feature, latent_moments,
                                    save_autoencoder, scaling_factor, set_scaling_factor)
from .data import ImageFolderCrops
from .loop import Trainer
from .losses import gradient_l1, kl_to_standard_normal

KL_WEIGHT = 1e-6
GRAD_WEIGHT = 0.5
VALID_SIDE = 256  # validation: the central 256×256 crop of every validation image


def autoencoder_loss(vae, x: torch.Tensor):
    mean, logvar = latent_moments(vae, encoder_feature(vae, x))
    # Decoding the unscaled latent: the scaling factor is only fixed after training.
    rec = decode_latent(vae, mean * scaling_factor(vae))
    loss, logs = reconstruction_loss(rec, x)
    if logvar is not None:
        loss = loss + KL_WEIGHT * kl_to_standard_normal(mean.float(), logvar.float())  # float32 under autocast
    return loss, logs


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor):
    """L1 + gradient-L1 between a reconstruction and its target, with the logs the progress bar shows."""
    l1 = F.l1_loss(rec, x)
    loss = l1 + GRAD_WEIGHT * gradient_l1(rec, x)
    return loss, {"l1": l1.item(), "psnr": psnr_from_mse(F.mse_loss(rec.clamp(-1, 1), x).item())}


def psnr_from_mse(mse_pm1: float) -> float:
    """PSNR in dB of an MSE measured on [-1, 1] images."""
    return 10 * math.log10(4.0 / max(mse_pm1, 1e-12))


@torch.no_grad()
def mean_psnr(vae, x: torch.Tensor, batch: int = 8, latent_noise: float = 0.0) -> float:
    """Mean over images of the PSNR of the 8-bit reconstruction (how users and rdeic eval count it).

    Args:
        latent_noise: std of Gaussian noise added to the latents (a fixed draw), to measure how the
            decoder copes with latents that are not exact (see :mod:`.stage_decoder`).
    """
    g = torch.Generator().manual_seed(0)
    values = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        z = encode_image(vae, xb)
        if latent_noise:
            z = z + latent_noise * torch.randn(z.shape, generator=g).to(z)
        rec8 = ((decode_latent(vae, z).clamp(-1, 1) + 1) * 127.5).round()
        mse = (rec8 - (xb + 1) * 127.5).pow(2).flatten(1).mean(1)
        values += [10 * math.log10(255**2 / max(m, 1e-12)) for m in mse.tolist()]
    return sum(values) / len(values)


@torch.no_grad()
def latent_scale(vae, data: ImageFolderCrops, n: int = 64) -> float:
    """1 / std of the latents, so that scaled latents have unit variance (what SD's 0.18215 does)."""
    x = data.batch(n, indices=range(min(n, len(data))))
    z = latent_moments(vae, encoder_feature(vae, x.to(next(vae.parameters()).device)))[0]
    return float(1.0 / z.std())


def train_autoencoder(config: dict, train_dir: str, valid_dir: str, work_dir: str, steps: int,
                      batch: int = 8, crop: int = 128, lr: float = 4e-4, seed: int = 0,
                      save_every: int = 250) -> None:
    """Train (or resume) the autoencoder in ``work_dir``; writes ``work_dir/vae`` when done."""
    torch.manual_seed(seed)
    vae = build_vae(config["vae"])
    set_scaling_factor(vae, 1.0)
    trainer = Trainer("autoencoder", work_dir, {"vae": vae}, steps, lr, save_every=save_every, clip=1.0)
    data = ImageFolderCrops(train_dir, crop, seed=trainer.seed(seed))
    valid = ImageFolderCrops(valid_dir, VALID_SIDE, seed=1)
    dev = trainer.device
    valid_x = valid.center_batch(VALID_SIDE).to(dev)  # the same crops at every validation

    def validate() -> str:
        return f"psnr {mean_psnr(vae, valid_x):.2f} dB ({len(valid_x)} centre crops)"

    trainer.run(lambda x: autoencoder_loss(vae, x), lambda: (data.batch(batch).to(dev),), validate)
    if trainer.rt.is_main:
        vae.to("cpu")
        set_scaling_factor(vae, latent_scale(vae, valid))
        save_autoencoder(vae, os.path.join(work_dir, "vae"))
        trainer.log(f"saved {os.path.join(work_dir, 'vae')} scaling_factor={scaling_factor(vae):.5f}")
    trainer.rt.barrier()
