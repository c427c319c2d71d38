"""Stage "autoencoder": train the latent autoencoder (diffusers ``AutoencoderKL``) of the small profile.

The paper uses Stable Diffusion's VAE; none can be downloaded here, so the small profile trains its
own: 4 latent channels at 1/8 resolution, loss L1 + gradient-L1 + a small KL term (as SD's VAE, with
the adversarial and LPIPS terms left out because no LPIPS backbone exists offline).

It reconstructs from the posterior mean: at initialisation the posterior's unit variance swamps the
latent, and with sampling the reconstruction stalled near 16.5 dB in the first 200 steps on the CPU.
The later stages therefore use the posterior mean as "the latent of the image".
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ..networks.autoencoder import build_vae
from .data import ImageFolderCrops
from .loop import Trainer
from .losses import gradient_l1, kl_to_standard_normal

KL_WEIGHT = 1e-6
GRAD_WEIGHT = 0.5


def autoencoder_loss(vae, x: torch.Tensor):
    posterior = vae.encode(x).latent_dist
    loss, logs = reconstruction_loss(vae.decode(posterior.mean).sample, x)
    return loss + KL_WEIGHT * kl_to_standard_normal(posterior.mean, posterior.logvar), logs


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor):
    """L1 + gradient-L1 between a reconstruction and its target, with the logs the progress bar shows."""
    l1 = F.l1_loss(rec, x)
    loss = l1 + GRAD_WEIGHT * gradient_l1(rec, x)
    return loss, {"l1": l1.item(), "psnr": psnr_from_mse(F.mse_loss(rec.clamp(-1, 1), x).item())}


def psnr_from_mse(mse_pm1: float) -> float:
    """PSNR in dB of an MSE measured on [-1, 1] images."""
    return 10 * math.log10(4.0 / max(mse_pm1, 1e-12))


@torch.no_grad()
def latent_scale(vae, data: ImageFolderCrops, n: int = 64) -> float:
    """1 / std of the latents, so that scaled latents have unit variance (what SD's 0.18215 does)."""
    x = data.batch(n, indices=range(min(n, len(data))))
    z = vae.encode(x.to(vae.device)).latent_dist.mean
    return float(1.0 / z.std())


def train_autoencoder(config: dict, train_dir: str, valid_dir: str, work_dir: str, steps: int,
                      batch: int = 8, crop: int = 128, lr: float = 2e-4, seed: int = 0,
                      save_every: int = 200) -> None:
    """Train (or resume) the autoencoder in ``work_dir``; writes ``work_dir/vae`` when done."""
    torch.manual_seed(seed)
    vae = build_vae(config["vae"])
    trainer = Trainer("autoencoder", work_dir, {"vae": vae}, steps, lr, save_every=save_every)
    data = ImageFolderCrops(train_dir, crop, seed=trainer.seed(seed))
    valid = ImageFolderCrops(valid_dir, 256, seed=1)
    dev = trainer.device
    valid_x = valid.batch(8, indices=range(8)).to(dev)  # the same crops at every validation

    def validate() -> str:
        _, logs = autoencoder_loss(vae, valid_x)
        return f"psnr {logs['psnr']:.2f} dB"

    trainer.run(lambda x: autoencoder_loss(vae, x), lambda: (data.batch(batch).to(dev),), validate)
    if trainer.rt.is_main:
        vae.register_to_config(scaling_factor=latent_scale(vae, valid))
        vae.to("cpu").save_pretrained(os.path.join(work_dir, "vae"))
        trainer.log(f"saved {os.path.join(work_dir, 'vae')} scaling_factor={vae.config.scaling_factor:.5f}")
    trainer.rt.barrier()
