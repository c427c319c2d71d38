"""Stage "context": train a learned context on a finished hyperprior module's y, for the rate alone.

A plain hyperprior codes every element of y with the Gaussian h_s(ẑ) gives it. The checkerboard context
(He et al., CVPR 2021; :class:`~rdeic_codec.networks.hyperprior.CheckerboardHyperContext`) codes half of
y first and predicts the other half's means and scales from its decoded neighbours as well, which costs
the decoder one small network at 1/16 of the image size. This stage trains that context on a module
that is otherwise finished: g_a, h_a, the gains, h_s, g_s and everything after stay frozen, so y and ẑ
are what they were and the loss is y's rate alone (Gaussian bits of y − μ plus uniform noise, the
proxy whose gradient reaches the means; validation counts the rounded residuals the coder writes).

The space-channel context (ELIC, He et al., CVPR 2022; :class:`~rdeic_codec.networks.hyperprior.
SpaceChannelHyperContext`) codes y in channel slices, each in the two checkerboard passes and knowing the
slices before it; with ``context_order`` "rate" this stage first puts y's costliest channels first.

The context starts as no context (its corrections' last layers are zero), so the first iteration codes
exactly as the plain module. What moves besides the rate: the non-anchor half of ŷ is rounded around
the context's means instead of h_s's, so z_c moves by less than the quantisation step there.
"""

from __future__ import annotations

import torch

from ..networks.compression import gaussian_bits
from ..networks.hyperprior import HyperContext
from ..refine import SCALE_BOUND
from .latent_cache import LatentCrops
from .loop import Trainer
from .stage_rdeic import compression_source, sample_lambdas

@torch.no_grad()
def frozen_y(model, feature, z, lam):
    """(gained y, h_s(ẑ), ẑ's bits) of the frozen module for a batch of crops at per-sample λ."""
    y, _, _, z_bits, hyper = model.compression.hyper_analysis(compression_source(model, feature, z), lam, SCALE_BOUND)
    return y, hyper, z_bits


def context_loss(model, feature, z, lam, generator=None, rounded: bool = False):
    """y's rate (and ẑ's, a constant here) in bits per pixel, averaged over the batch; returns (loss, logs).

    Args:
        feature, z: the crops' encoder features (None for a module that reads the latent) and latents.
        lam: per-sample λ.
        rounded: the rate of the rounded residuals (what the file costs) instead of the noisy proxy.
    """
    # In float32 even under a bfloat16 autocast (training/precision.py): the whole loss is the rate, and
    # bfloat16's 8 bits are too few for y − μ and the likelihoods. The context is small; it costs little.
    with torch.autocast(z.device.type, enabled=False):
        y, hyper, z_bits = frozen_y(model, None if feature is None else feature.float(), z.float(), lam)
        scales, means = model.compression.y_parameters(y, hyper)
        scales = scales.abs().clamp_min(SCALE_BOUND)
        if rounded:
            residual = torch.round(y - means)
        else:
            residual = y - means + torch.rand(y.shape, generator=generator).to(y.device) - 0.5
        bpp = (gaussian_bits(residual, scales).flatten(1).sum(1) + z_bits) / (z.shape[2] * z.shape[3] * 64)
    return bpp.mean(), {"bpp_rounded" if rounded else "bpp_proxy": bpp.mean().item()}


@torch.no_grad()
def channels_by_rate(model, feature, z, lam: float = 0.5) -> torch.Tensor:
    """y's channels ordered by what each costs the plain hyperprior (h_s's parameters alone, rounded
    residuals) on these crops at ``lam``, most first. A space-channel context codes the costly channels
    first, so that the rest are coded knowing them (``context_order`` "rate"). The stage passes its 32
    validation crops: a statistic of the frozen module, which the context does not train on."""
    y, hyper, _ = frozen_y(model, feature, z, torch.full((z.shape[0],), lam, device=z.device))
    scales, means = hyper.chunk(2, dim=1)
    bits = gaussian_bits(torch.round(y - means), scales.abs().clamp_min(SCALE_BOUND)).sum((0, 2, 3))
    return torch.argsort(bits.cpu(), descending=True, stable=True)


def train_context(model, cache_path: str, valid_cache: str, work_dir: str, steps: int, batch: int = 8,
                  crop: int = 32, lr: float = 1e-4, seed: int = 0, save_every: int = 300, log=print):
    """Train (or resume) the learned context of ``model``'s hyperprior module; updates ``model``.

    Args:
        model: a model whose compression module has a learned context (the profile's ``context``
            "checkerboard" or "space-channel"), trained or seeded from a module without it.
        cache_path, valid_cache: latent caches (training; validation: 32 fixed centre crops, whose rate
            is reported at λ = 0.1, 0.5, 2 as the file would count it).
        work_dir: the stage's checkpoint folder (it checkpoints the whole compression module).
        steps: total iterations (a resumed run goes on to this count).
        crop: crop side in latent pixels.
        lr: peak learning rate.
        log: where the reordering of y's channels (``context_order`` "rate") is reported.
    """
    if type(model.compression.context) is HyperContext:
        raise ValueError("the context stage needs a compression module with a learned context "
                         "(the profile's compression section: context \"checkerboard\" or \"space-channel\")")
    torch.manual_seed(seed)
    model.requires_grad_(False)
    params = list(model.compression.context.parameters())
    for p in params:
        p.requires_grad_(True)
    trainer = Trainer("context", work_dir, {"compression": model.compression}, steps, lr, params=params,
                      clip=1.0, save_every=save_every)
    dev = trainer.device
    model.to(dev)
    features = not model.compression.reads_latent
    data = LatentCrops(cache_path, crop, seed=trainer.seed(seed), features=features)
    valid = LatentCrops(valid_cache, crop, seed=1, features=features, flips=False)
    count = min(32, len(valid))
    z_valid, feat_valid = (v if v is None else v.to(dev) for v in valid.batch(count, indices=range(count)))
    if trainer.start == 0 and model.compression.cfg.get("context_order") == "rate":
        # Before the context learns (a resumed run has the order in its checkpoint).
        order = channels_by_rate(model, feat_valid, z_valid)
        model.compression.reorder_y(order)
        log(f"context: y's channels reordered by their rate, most first: {order.tolist()}")
    lo, hi = model.compression.lambda_range
    gen = torch.Generator().manual_seed(trainer.seed(seed))

    def draw():
        z, feat = data.batch(batch)
        return None if feat is None else feat.to(dev), z.to(dev), sample_lambdas(batch, lo, hi, gen).to(dev)

    def validate() -> str:
        rows = []
        for lv in (0.1, 0.5, 2.0):
            lam = torch.full((count,), lv, device=dev)
            _, lg = context_loss(model, feat_valid, z_valid, lam, rounded=True)
            rows.append(f"λ={lv}: bpp_rounded {lg['bpp_rounded']:.5f}")
        return "; ".join(rows)

    trainer.run(lambda feat, z, lam: context_loss(model, feat, z, lam, gen), draw, validate)
    model.requires_grad_(False)
    return model
