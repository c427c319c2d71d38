"""RDEIC stage 2, fixed-step fine-tuning (FSFT; method file, section 6).

Start from x_N, run the whole 2- or 5-step relay sampler with gradients, decode with the (frozen)
VAE decoder and compare pixels:

    loss = λ·(MSE_pixel + 0.5·(1 − MS-SSIM) + D(z_c, z)) + bpp + L_vq   (D: see stage_rdeic.zc_distortion)

The authors use LPIPS where we use 1 − MS-SSIM (no LPIPS backbone exists offline). Each batch draws
its step count from {2, 5}, so one model serves both (the authors fine-tune one model per count).
A profile's ``finetune.adversarial_weight`` > 0 adds HiFiC's adversarial term (:mod:`.adversarial`), and
``finetune.feature_weight`` > 0 adds λ·w·(the autoencoder encoder's feature distance,
:func:`.losses.feature_distance`), a stand-in for LPIPS.
"""

from __future__ import annotations

import torch

from ..networks.autoencoder import decode_latent, encoder_feature, latent_from_feature
from ..networks.control import controlled_prediction
from ..sampler import relay_sample
from .data import ImageFolderCrops
from .file_rate import file_bpp, validation_images
from .loop import Trainer
from .losses import feature_distance, ms_ssim_loss
from .stage_rdeic import (compression_is_frozen, compression_source, diffusion_stage_weight, sample_lambdas,
                          zc_distortion)

PERCEPTUAL_WEIGHT = 0.5


def finetune_loss(model, x: torch.Tensor, lam: torch.Tensor, steps: int, generator, adversarial=None,
                  feature_weight: float = 0.0):
    """One stage-2 loss evaluation; returns (loss, logs). With ``adversarial`` (an
    :class:`.adversarial.AdversarialTerm`), its critic takes a step on this batch first, and its
    generator term joins the loss; ``feature_weight`` > 0 adds the weighted feature distance."""
    with torch.no_grad():
        feat = encoder_feature(model.vae, x)
        z = latent_from_feature(model.vae, feat)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not compression_is_frozen(model)):
        out = model.compression(compression_source(model, feat, z), lam)

    def model_fn(x_t, t):
        return controlled_prediction(model.unet, model.control, x_t, t, model.unet.context, out["c"], out["z_c"],
                                     diffusion=model.config["diffusion"])

    latent = relay_sample(model.config["diffusion"], out["z_c"], model_fn, steps, generator,
                          prediction_type=model.control.prediction_type)
    rec = decode_latent(model.vae, latent)
    mse = (rec - x).pow(2).flatten(1).mean(1)
    perceptual = ms_ssim_loss(rec, x)
    dist_zc, _ = zc_distortion(model, out["z_c"], z, generator, lam)
    bpp = out["bits"] / (x.shape[2] * x.shape[3])
    lam = diffusion_stage_weight(model, lam)
    loss = (lam * (mse + PERCEPTUAL_WEIGHT * perceptual + dist_zc)).mean() + bpp.mean() + out["vq_loss"]
    logs = {"bpp": bpp.mean().item(), "mse": mse.mean().item(), "msssim": 1 - perceptual.mean().item()}
    if feature_weight > 0:
        feature = feature_distance(model.vae, rec, x)
        loss = loss + feature_weight * (lam * feature).mean()
        logs["feature"] = feature.mean().item()
    if adversarial is not None:
        logs["d_loss"] = adversarial.update(x, rec, out["z_c"])
        g_loss = adversarial.generator_loss(rec, out["z_c"])
        loss = loss + adversarial.weight * (lam * g_loss).mean()
        logs["g_loss"] = g_loss.mean().item()
    return loss, logs


def train_finetune(model, train_dir: str, valid_dir: str, work_dir: str, steps: int, batch: int = 4,
                   crop: int = 128, lr: float = 2e-5, seed: int = 0, save_every: int = 200):
    """Fine-tune compression + control (or control alone, :func:`.stage_rdeic.compression_is_frozen`)
    through the sampler and the VAE decoder; updates ``model``."""
    torch.manual_seed(seed)
    for p in list(model.vae.parameters()) + list(model.unet.parameters()):
        p.requires_grad_(False)
    params = list(model.compression.parameters()) + list(model.control.parameters())
    if compression_is_frozen(model):  # the control module alone (see stage_rdeic.compression_is_frozen)
        model.compression.requires_grad_(False)
        params = list(model.control.parameters())
    trained = {"compression": model.compression, "control": model.control}
    settings = model.config.get("finetune", {})
    weight = settings.get("adversarial_weight", 0.0)
    feature_weight = settings.get("feature_weight", 0.0)
    adversarial = None
    if weight > 0:
        from .adversarial import AdversarialTerm

        adversarial = AdversarialTerm(model.config["unet"]["in_channels"], weight)
        trained["critic"] = adversarial.critic  # checkpointed with the stage, never written to the model
    trainer = Trainer("finetune", work_dir, trained, steps, lr, params=params, warmup=20, clip=1.0,
                      save_every=save_every)
    dev = trainer.device
    model.to(dev)
    data = ImageFolderCrops(train_dir, crop, seed=trainer.seed(seed))
    valid = ImageFolderCrops(valid_dir, 256, seed=1)
    lo, hi = model.compression.lambda_range
    gen = torch.Generator().manual_seed(trainer.seed(seed))

    def draw():
        n_steps = 2 if torch.rand(1, generator=gen).item() < 0.5 else 5
        return data.batch(batch).to(dev), sample_lambdas(batch, lo, hi, gen).to(dev), n_steps

    x_valid = valid.batch(8, indices=range(8)).to(dev)  # the same crops at every validation
    real_images = validation_images(valid_dir)

    def validate() -> str:
        rows = []
        for lv in (0.1, 2.0):
            _, lg = finetune_loss(model, x_valid, torch.full((8,), lv, device=dev), 2, torch.Generator().manual_seed(0))
            rows.append(f"λ={lv}: bpp {lg['bpp']:.4f} file_bpp {file_bpp(model, real_images, lv):.4f} "
                        f"ms-ssim {lg['msssim']:.4f}")
        return "; ".join(rows)

    model.unet.eval()
    model.vae.eval()
    trainer.run(lambda x, lam, n: finetune_loss(model, x, lam, n, gen, adversarial, feature_weight), draw, validate)
    return model
