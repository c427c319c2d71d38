"""Stage "decoder_zc": refine the autoencoder's decoder on what it decodes in use, the compressed latent.

In a learned codec the synthesis transform is trained with the rest, on the quantised latent (Ballé et
al., ICLR 2018; Minnen et al., NeurIPS 2018). Here the decoder is trained before the compression module,
on the autoencoder's own latents (the "decoder" stage adds noise to them), and the compression module
then learns to make a z_c that this fixed decoder turns into a good image. This stage closes the loop
the other way: with the encoder, the compression module and the control module frozen, it fine-tunes
the decoder to turn z_c back into the *photo* (MSE plus a share of 1 − MS-SSIM, images in [−1, 1]).

What it leaves unchanged: every file's bits (the encoder and the compression module are frozen), so a
model refined by it codes exactly the bytes it did before and compares photo by photo. It runs last,
after stage 2: the steps' outputs lie between z_c and the true latent z, so a share of the samples
(``clean_share``) decodes z instead of z_c, which keeps the decoder good at what the steps hand it.

On the 66 validation photos, 316b76f2's decoder after 3,000 iterations (the shipped model 3b514f0e) gave
z_c +0.13 / +0.24 / +0.17 dB and +0.003 to +0.005 MS-SSIM at λ = 0.1 / 0.5 / 2, NIQE 0.17–0.45 lower,
from the same files; with 5 steps +0.07 / +0.14 / +0.01 dB (docs/training.md, session 14). Its price: the
true latent z, which no file gives, decoded 0.86 dB worse (29.05 dB on the 66 validation centre crops).
"""

from __future__ import annotations

import math

import torch

from ..networks.autoencoder import decode_latent, decoder_modules
from .latent_cache import LatentPhotoCrops
from .loop import Trainer
from .losses import ms_ssim_loss
from .stage_rdeic import compression_source, sample_lambdas


def checkpointed_modules(model) -> dict:
    """What the stage trains and checkpoints: the decoder's modules, by name."""
    return {f"decoder{k}" if k else "decoder": m for k, m in enumerate(decoder_modules(model.vae))}


WINDOW = 16  # latent pixels (128 image pixels) decoded with gradients, out of each crop's z_c


def decoder_zc_loss(model, feature, z, photo, lam, clean_share: float, msssim_weight: float, generator=None):
    """One loss evaluation; returns (loss, logs).

    Args:
        feature, z: the crops' encoder features (None for a module that reads the latent) and latents.
        photo: the photo pixels under the crops, in [-1, 1].
        lam: per-sample λ of the compression module.
        clean_share: the share of samples that decode z instead of z_c.
        msssim_weight: the weight of 1 − MS-SSIM next to the MSE.
    """
    # z_c in float32 with y rounded as coding rounds it, whatever the training precision.
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
        z_c = model.compression(compression_source(model, feature, z), lam)["z_c"].float()
        clean = torch.rand(z.shape[0], generator=generator) < clean_share
        latent = torch.where(clean.view(-1, 1, 1, 1).to(z.device), z, z_c)
    # The compression module saw the whole crop (its hyperprior's context); the decoder, the costly part,
    # trains on a window of it.
    w = min(WINDOW, z.shape[2], z.shape[3])
    i, j = (int(torch.randint(0, n - w + 1, (1,), generator=generator)) for n in z.shape[2:])
    decoded = decode_latent(model.vae, latent[:, :, i : i + w, j : j + w])
    target = photo[:, :, 8 * i : 8 * (i + w), 8 * j : 8 * (j + w)]
    mse = (decoded - target).pow(2).flatten(1).mean(1)
    perceptual = ms_ssim_loss(decoded, target)
    loss = (mse + msssim_weight * perceptual).mean()
    return loss, {"psnr": 10 * math.log10(4.0 / max(mse.mean().item(), 1e-12)), "msssim": 1 - perceptual.mean().item()}


def train_decoder_zc(model, cache_path: str, train_dir: str, valid_cache: str, valid_dir: str, work_dir: str,
                     steps: int, batch: int = 8, crop: int = 32, lr: float = 1e-4, clean_share: float = 0.25,
                     msssim_weight: float = 0.1, seed: int = 0, save_every: int = 300):
    """Train (or resume) the decoder of ``model`` on its compression module's z_c; updates ``model``.

    Args:
        model: a model whose compression (and control) modules are trained; only the decoder changes.
        cache_path, train_dir: the latent cache and the image folder it was built from.
        valid_cache, valid_dir: the same for validation (8 fixed centre crops at λ = 0.1, 0.5, 2).
        work_dir: the stage's checkpoint folder.
        steps: total iterations (a resumed run goes on to this count).
        crop: crop side in latent pixels (the decoder trains on a ``WINDOW``-pixel window of it).
        lr: peak learning rate.
        clean_share, msssim_weight: see :func:`decoder_zc_loss`.
    """
    torch.manual_seed(seed)
    model.requires_grad_(False)
    trained = checkpointed_modules(model)
    for m in trained.values():
        m.requires_grad_(True)
    trainer = Trainer("decoder_zc", work_dir, trained, steps, lr, clip=1.0, save_every=save_every)
    dev = trainer.device
    model.to(dev)
    model.compression.eval()
    features = not model.compression.reads_latent
    data = LatentPhotoCrops(cache_path, train_dir, crop, seed=trainer.seed(seed), features=features)
    valid = LatentPhotoCrops(valid_cache, valid_dir, crop, seed=1, features=features, flips=False)
    z_valid, feat_valid, photo_valid = valid.batch(8, indices=range(8))
    lo, hi = model.compression.lambda_range
    gen = torch.Generator().manual_seed(trainer.seed(seed))

    def loss_fn(feat, z, photo, lam, g=gen):
        return decoder_zc_loss(model, feat, z, photo, lam, clean_share, msssim_weight, g)

    def draw():
        z, feat, photo = data.batch(batch)
        lam = sample_lambdas(batch, lo, hi, gen)
        return None if feat is None else feat.to(dev), z.to(dev), photo.to(dev), lam.to(dev)

    def validate() -> str:
        rows = []
        for lv in (0.1, 0.5, 2.0):
            _, lg = decoder_zc_loss(model, None if feat_valid is None else feat_valid.to(dev), z_valid.to(dev),
                                    photo_valid.to(dev), torch.full((8,), lv, device=dev), 0.0, msssim_weight,
                                    torch.Generator().manual_seed(0))
            rows.append(f"λ={lv}: psnr_zc {lg['psnr']:.4f} msssim_zc {lg['msssim']:.4f}")
        return "; ".join(rows)

    trainer.run(loss_fn, draw, validate)
    model.requires_grad_(False)
    return model
