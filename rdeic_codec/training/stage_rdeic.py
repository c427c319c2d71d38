"""RDEIC stage 1 ("independent" training, method file section 6): compression + control modules.

The autoencoder and the base denoiser are frozen. For each sample, λ is drawn log-uniformly from the
model's range (one model for every rate) and t uniformly from 0..299:

    ε' = ε + (z_c − z)/λ_r,  x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε',  ẑ0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t
    (an anchored control module predicts ẑ0 itself, anchored on z_c: :mod:`..networks.control`)
    loss = λ·[MSE(ẑ0, z) + D(z_c, z)] + bpp + L_vq

where z is the image's scaled latent (the posterior mean, see :mod:`.stage_autoencoder`) and D the
paper's MSE(z_c, z), or for profiles that ask for it a mostly pixel-space distortion
(:func:`zc_distortion`). λ here stands for :func:`distortion_weight`.

Stage "compression" (our addition, to use both CPU cores) pretrains the compression module alone,
before stage 1, with the diffusion term replaced by a second z_c term:
loss = 2λ·D(z_c, z) + bpp + L_vq. It needs no denoiser, so it runs beside the denoiser's training.
"""

from __future__ import annotations

import math

import torch

from ..networks.autoencoder import decode_latent
from ..networks.control import controlled_prediction
from ..sampler import alphas_cumprod
from .file_rate import file_bpp, validation_images
from .latent_cache import LatentCrops
from .loop import Trainer
from .losses import ms_ssim_loss


def compression_is_frozen(model) -> bool:
    """Whether stages 1 and 2 keep the compression module as its own stage left it (the compression
    section's ``train_in_diffusion_stages`` false) and train the control module alone.

    The hyperprior design sets its rates with its own distortion weight in the compression stage; the
    diffusion stages' terms would move them again (stage 2 raised the paper design's λ = 2 from 0.159
    to 0.194 bpp, docs/training.md), so it stays frozen there."""
    return not model.compression.cfg.get("train_in_diffusion_stages", True)


def compression_source(model, feature: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """What the compression module's g_a reads: the autoencoder encoder's feature, or the latent z for
    a module whose config says ``input: "latent"`` (the small-hyperprior profile's)."""
    return z if model.compression.reads_latent else feature


def sample_lambdas(n: int, lo: float, hi: float, generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def distortion_weight(model, lam: torch.Tensor) -> torch.Tensor:
    """The weight of the distortion terms: ``distortion_scale``·λ^``distortion_power`` (the paper: 1·λ¹).

    The two map a profile's latent MSE onto the paper's rate range for its λ values (λ = 0.1 → about
    0.025 bpp, λ = 2 → about 0.12); they only change training, not the bitstream.
    """
    cfg = model.compression.cfg
    return cfg.get("distortion_scale", 1.0) * lam ** cfg.get("distortion_power", 1.0)


def diffusion_stage_weight(model, lam: torch.Tensor) -> torch.Tensor:
    """The distortion weight of stages 1 and 2: :func:`distortion_weight`, or 1 for every λ when the
    compression module is frozen there (no rate to trade against: the control module then learns every
    rate alike instead of mostly the highest)."""
    if compression_is_frozen(model):
        return torch.ones_like(lam)
    return distortion_weight(model, lam)


PIXEL_WINDOW = 16  # latent pixels (128 image pixels): where the pixel term decodes, to keep it cheap


def zc_msssim_weight(cfg: dict, lam: torch.Tensor | None) -> torch.Tensor | float:
    """The weight of z_c's MS-SSIM term, per sample of raw λ (``lam``) where the profile fades it.

    ``zc_msssim_fade`` = [λ_lo, λ_hi]: the full ``zc_msssim_weight`` up to λ_lo, falling linearly in
    log λ to 0 at λ_hi and above. Why: the term buys structure at the lowest rates but costs PSNR and
    MS-SSIM alike at the higher ones (docs/training.md, session 13: without it +0.4–0.5 dB at 0.05–0.08
    bpp; faded, the same gain there and the low end kept). Without the key (or without λ) the weight is flat.
    """
    weight = cfg.get("zc_msssim_weight", 0.0)
    fade = cfg.get("zc_msssim_fade")
    if fade is None or lam is None or weight == 0:
        return weight
    lo, hi = math.log(fade[0]), math.log(fade[1])
    share = ((hi - torch.log(lam.float())) / (hi - lo)).clamp(0, 1)
    return weight * share


def zc_distortion(model, z_c: torch.Tensor, z: torch.Tensor, generator=None, lam: torch.Tensor | None = None):
    """The distortion of the latent prediction z_c, per sample; returns (distortion, logs).

    The paper's term is MSE(z_c, z) in latent space (``zc_latent_weight`` 1, ``zc_pixel_weight`` 0, the
    defaults). With ``zc_pixel_weight`` > 0 it adds the MSE between what the frozen decoder makes of z_c
    and of z (images in [-1, 1]) on a random window of ``PIXEL_WINDOW`` latent pixels. Why: the latent
    MSE rewards a blurred latent, and the small profile's decoder turns a blurred latent into a far worse
    image than a blurred image (issue 11: a 2× latent blur costs 12 dB, a 4× image thumbnail 3 dB),
    so the pixel term spends the bits where the decoded image needs them. A small latent term keeps z_c
    near z, which the relay diffusion starts from. ``zc_msssim_weight`` > 0 adds 1 − MS-SSIM on the
    same window, weighted per sample by :func:`zc_msssim_weight` of the raw λ ``lam``.

    When gradients are on but none can reach z_c (stages 1 and 2 with the compression module frozen),
    the distortion is a constant: it returns 0 with only the latent MSE logged, instead of decoding a
    pixel window for nothing (about 15% of a stage-1 iteration). Validation (no gradients) measures it whole.
    """
    cfg = model.compression.cfg
    mse_lat = (z_c - z).pow(2).flatten(1).mean(1)
    logs = {"mse_zc": mse_lat.mean().item()}
    if torch.is_grad_enabled() and not z_c.requires_grad:
        return torch.zeros_like(mse_lat), logs
    pixel_weight, use_msssim = cfg.get("zc_pixel_weight", 0.0), cfg.get("zc_msssim_weight", 0.0) > 0
    dist = cfg.get("zc_latent_weight", 1.0) * mse_lat
    if pixel_weight > 0 or use_msssim:
        w = min(PIXEL_WINDOW, z.shape[2], z.shape[3])
        i, j = (int(torch.randint(0, n - w + 1, (1,), generator=generator)) for n in z.shape[2:])
        window = (slice(None), slice(None), slice(i, i + w), slice(j, j + w))
        with torch.no_grad():
            target = decode_latent(model.vae, z[window])
        decoded = decode_latent(model.vae, z_c[window])
        mse_pix = (decoded - target).pow(2).flatten(1).mean(1)
        dist = dist + pixel_weight * mse_pix
        logs["psnr_zc"] = 10 * math.log10(4.0 / max(mse_pix.mean().item(), 1e-12))
        if use_msssim:
            # 1 − MS-SSIM, as stage 2 uses in place of LPIPS: structure and contrast, which MSE blurs away.
            perceptual = ms_ssim_loss(decoded, target)
            dist = dist + zc_msssim_weight(cfg, lam) * perceptual
            logs["msssim_zc"] = 1 - perceptual.mean().item()
    return dist, logs


def compression_loss(model, feature, z, lam, generator=None):
    """The pretraining loss of the compression module alone; returns (loss, logs)."""
    out = model.compression(compression_source(model, feature, z), lam)
    dist, logs = zc_distortion(model, out["z_c"], z, generator, lam)
    lam = distortion_weight(model, lam)
    bpp = out["bits"] / (z.shape[2] * z.shape[3] * 64)
    loss = (2 * lam * dist).mean() + bpp.mean() + out["vq_loss"]
    return loss, {"bpp": bpp.mean().item(), **logs}


def stage1_loss(model, feature, z, lam, t, ab, relay_start: int, generator):
    """One stage-1 loss evaluation; returns (loss, logs)."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not compression_is_frozen(model)):
        out = model.compression(compression_source(model, feature, z), lam)
    raw_lam, lam = lam, diffusion_stage_weight(model, lam)
    z_c = out["z_c"]
    lam_r = math.sqrt(1.0 / float(ab[relay_start]) - 1.0)
    eps = torch.randn(z.shape, generator=generator).to(z.device) + (z_c - z) / lam_r
    a = ab[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * z + (1 - a).sqrt() * eps
    pred = controlled_prediction(model.unet, model.control, x_t, t, model.unet.context, out["c"], z_c,
                                 diffusion=model.config["diffusion"])
    z0 = pred if model.control.prediction_type == "sample" else (x_t - (1 - a).sqrt() * pred) / a.sqrt()
    mse_x0 = (z0 - z).pow(2).flatten(1).mean(1)
    dist_zc, logs = zc_distortion(model, z_c, z, generator, raw_lam)
    pixels = z.shape[2] * z.shape[3] * 64
    bpp = out["bits"] / pixels
    loss = (lam * (mse_x0 + dist_zc)).mean() + bpp.mean() + out["vq_loss"]
    return loss, {"bpp": bpp.mean().item(), "mse_x0": mse_x0.mean().item(), **logs}


def part_parameters(compression, name: str) -> list:
    """The parameters a ``continue_parts`` name stands for: a submodule's (``"g_a"``, ``"context"``, ...),
    or ``"gains"`` for the per-λ gains on y, which are parameters of the module itself; naming them apart
    from g_a tells which of the two a continuation should train."""
    if name == "gains":
        return [compression.log_gain, compression.log_inv_gain]
    return list(getattr(compression, name).parameters())


def train_stage1(model, cache_path: str, valid_cache: str, work_dir: str, steps: int, batch: int = 8,
                 crop: int = 32, lr: float = 1e-4, seed: int = 0, save_every: int = 300,
                 diffusion: bool = True, valid_dir: str | None = None, parts: list[str] | None = None,
                 freeze_context: bool = False, name: str | None = None):
    """Train (or resume) stage 1 on a model whose VAE and UNet are already trained; updates ``model``.

    With ``diffusion=False`` this is the "compression" pretraining stage (no UNet, no control); ``parts``
    then names the compression module's submodules it trains (e.g. ``["g_s", "out", "context"]``, the
    profile's ``continue_parts`` for a continued stage), the rest frozen; None trains all of it, or all
    but the learned context with ``freeze_context`` (its corrections start at zero, so the module trains
    as one without a context; the context stage comes after).
    With ``valid_dir``, validation also range-codes a few of its images (see :mod:`.file_rate`).
    ``name`` is what the log calls the stage (default "stage1" or "compression").
    """
    torch.manual_seed(seed)
    for p in list(model.vae.parameters()) + list(model.unet.parameters()):
        p.requires_grad_(False)
    trained = {"compression": model.compression}
    params = None
    if not diffusion and parts:
        model.compression.requires_grad_(False)
        params = [p for name in parts for p in part_parameters(model.compression, name)]
        for p in params:
            p.requires_grad_(True)
    elif not diffusion and hasattr(model.compression, "param_groups"):
        params = model.compression.param_groups()
        if freeze_context:
            held = {id(p) for p in model.compression.context.parameters()}
            model.compression.context.requires_grad_(False)
            params = [{**g, "params": [p for p in g["params"] if id(p) not in held]} for g in params]
    if diffusion:
        trained["control"] = model.control
        if compression_is_frozen(model):  # still checkpointed with the stage, so later stages find it
            model.compression.requires_grad_(False)
            params = list(model.control.parameters())
    trainer = Trainer(name or ("stage1" if diffusion else "compression"), work_dir, trained, steps, lr, params=params,
                      clip=1.0, save_every=save_every)
    dev = trainer.device
    model.to(dev)
    features = not model.compression.reads_latent  # a module that reads the latent needs no features in memory
    data = LatentCrops(cache_path, crop, seed=trainer.seed(seed), features=features)
    valid = LatentCrops(valid_cache, crop, seed=1, features=features, flips=False)
    dcfg = model.config["diffusion"]
    ab = torch.tensor(alphas_cumprod(dcfg), dtype=torch.float32, device=dev)
    lo, hi = model.compression.lambda_range
    gen = torch.Generator().manual_seed(trainer.seed(seed))
    z_valid, feat_valid = (v if v is None else v.to(dev) for v in valid.batch(8, indices=range(8)))  # same crops every time
    real_images = validation_images(valid_dir) if valid_dir else []

    def loss_fn(feat, z, lam, t, g=gen):
        if diffusion:
            return stage1_loss(model, feat, z, lam, t, ab, dcfg["relay_start"], g)
        return compression_loss(model, feat, z, lam, g)

    def draw():
        z, feat = data.batch(batch)
        lam = sample_lambdas(batch, lo, hi, gen)
        t = torch.randint(0, dcfg["relay_start"] + 1, (batch,), generator=gen)
        return None if feat is None else feat.to(dev), z.to(dev), lam.to(dev), t.to(dev)

    def validate() -> str:
        g = torch.Generator().manual_seed(0)
        rows = []
        for lv in (0.1, 0.5, 2.0):
            # At the relay start, where decoding begins: stage 1 never trains beyond it, so a later t
            # (the paper's 299 in a small profile) would measure nothing it learns.
            _, lg = loss_fn(feat_valid, z_valid, torch.full((8,), lv, device=dev),
                            torch.full((8,), dcfg["relay_start"], device=dev), g)
            if real_images:
                lg["file_bpp"] = file_bpp(model, real_images, lv)
            rows.append(f"λ={lv}: " + " ".join(f"{k} {v:.4f}" for k, v in lg.items()))
        return "; ".join(rows)

    model.unet.eval()
    model.vae.eval()
    trainer.run(loss_fn, draw, validate)
    return model


def estimate_index_prior(model, cache_path: str, crop: int = 32, batches: int = 50, batch: int = 16) -> None:
    """Replace the codebook usage EMA by counts over training crops (the coding-time index prior)."""
    data = LatentCrops(cache_path, crop, seed=123)
    counts = torch.zeros_like(model.compression.quantize.embed_prob)
    lo, hi = model.compression.lambda_range
    g = torch.Generator().manual_seed(0)
    dev = next(model.compression.parameters()).device
    with torch.no_grad():
        for _ in range(batches):
            _, feat = data.batch(batch)
            _, idx = model.compression.analyse(feat.to(dev), sample_lambdas(batch, lo, hi, g).to(dev))
            counts += torch.bincount(idx.flatten(), minlength=counts.numel()).to(counts)
    model.compression.quantize.embed_prob.copy_((counts + 0.5) / (counts + 0.5).sum())
