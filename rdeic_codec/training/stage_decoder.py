"""Stage "decoder": refine the autoencoder's decoder with its encoder frozen.

The autoencoder bounds every rate: the diffusion stages can only restore latents, and the decoder
turns them into pixels. Training the decoder alone leaves the latents unchanged, so the latent cache,
the denoiser and the compression and control modules trained on them stay valid, and the stage can
run (or be extended) at any time. Encoding runs without gradients, which makes a step cheaper than an
autoencoder step. (The autoencoder has no dropout or batch statistics, so train and eval modes agree.)

Latent noise: half of each batch gets Gaussian noise of a standard deviation drawn uniformly from
[0, ``noise``] added to its latent before decoding. What the decoder receives in use is never the
exact latent: the compression module's z_c and the few-step sampler's output both carry errors, and
a decoder trained on clean latents only amplifies them (issue 11: σ = 0.2 cost 1.7 dB, shown as
coloured speckle). The other half keeps the clean reconstruction sharp.
"""

from __future__ import annotations

import os

import torch

from ..networks.autoencoder import decoder_modules, encode_image, decode_latent, load_autoencoder, save_autoencoder
from .data import ImageFolderCrops
from .loop import Trainer
from .stage_autoencoder import VALID_SIDE, mean_psnr, reconstruction_loss


def decoder_parameters(vae) -> list:
    """What this stage trains: everything after the latent."""
    return [p for m in decoder_modules(vae) for p in m.parameters()]


NOISE = 0.2  # the largest latent noise σ (the latents have unit variance)


def add_latent_noise(z: torch.Tensor, noise: float, generator=None) -> torch.Tensor:
    """Latents of the odd batch positions plus Gaussian noise of a std drawn from U[0, noise]."""
    n = z.shape[0]
    sigma = torch.rand(n, generator=generator) * noise * (torch.arange(n) % 2 == 1)
    return z + sigma.view(-1, 1, 1, 1).to(z) * torch.randn(z.shape, generator=generator).to(z)


def _loss(vae, x: torch.Tensor, noise: float = 0.0, generator=None):
    with torch.no_grad():
        z = encode_image(vae, x)
        if noise > 0:
            z = add_latent_noise(z, noise, generator)
    return reconstruction_loss(decode_latent(vae, z), x)


def train_decoder(vae_dir: str, train_dir: str, valid_dir: str, work_dir: str, steps: int,
                  batch: int = 8, crop: int = 128, lr: float = 2e-4, seed: int = 0,
                  save_every: int = 200, noise: float = NOISE) -> None:
    """Fine-tune (or resume) the decoder of the autoencoder in ``vae_dir``; writes ``work_dir/vae``.

    Args:
        vae_dir: the trained autoencoder (a folder from ``save_autoencoder``); its encoder is left as it is.
        train_dir, valid_dir: image folders.
        work_dir: where checkpoints and the refined autoencoder go.
        steps: total iterations (a resumed run goes on to this count).
        noise: the largest latent-noise σ of the augmentation (0: none).
    """
    torch.manual_seed(seed)
    vae = load_autoencoder(vae_dir)
    vae.requires_grad_(False)
    params = decoder_parameters(vae)
    for p in params:
        p.requires_grad_(True)
    trainer = Trainer("decoder", work_dir, {"vae": vae}, steps, lr, params=params, save_every=save_every)
    data = ImageFolderCrops(train_dir, crop, seed=trainer.seed(seed + 7919))
    dev = trainer.device
    valid = ImageFolderCrops(valid_dir, VALID_SIDE, seed=1).center_batch(VALID_SIDE).to(dev)  # as the autoencoder stage

    def validate() -> str:
        return (f"psnr {mean_psnr(vae, valid):.2f} dB, with latent noise σ {NOISE}: "
                f"{mean_psnr(vae, valid, latent_noise=NOISE):.2f} dB ({len(valid)} centre crops)")

    gen = torch.Generator().manual_seed(trainer.seed(seed + 104729))
    trainer.run(lambda x: _loss(vae, x, noise, gen), lambda: (data.batch(batch).to(dev),), validate)
    if trainer.rt.is_main:
        save_autoencoder(vae.to("cpu"), os.path.join(work_dir, "vae"))
        trainer.log(f"saved {os.path.join(work_dir, 'vae')}")
    trainer.rt.barrier()
