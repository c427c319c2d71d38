"""Encoder-side refinement (``rdeic encode --refine N``): the latent y that codes *this* photo best.

g_a predicts y in one pass, trained to do well on photos on average (amortised inference). Refinement then
lowers this photo's own rate–distortion loss for N gradient steps, through the very networks the decoder
runs (h_s, g_s, ``out`` and the autoencoder's decoder), all frozen. Only y and the hyper latent change
(their starting points are g_a's and h_a's), so the file format, the decoder and its determinism stay
as they are; only encoding takes longer. Its loss is the compression module's training loss,
bits + 2·w(λ)·(MSE + c·(1 − MS-SSIM)), but against the photo's own pixels, which is what a user
measures, and with c = ``MSSSIM_WEIGHT`` instead of the training's 0.15.

Campos, Meierhans, Djelouah and Schroers, "Content Adaptive Optimization for Neural Image Compression"
(CVPR Workshops 2019); Yang, Bamler and Mandt, "Improving Inference for Neural Image Compression"
(NeurIPS 2020), who name the gap it closes the amortisation gap.

How the steps are taken, and why:

* The decoded image sees y rounded around its mean, with a straight-through gradient (as in training).
* The rate's gradient comes from y − μ plus uniform noise. The rounded residual's likelihood has no
  gradient at 0, where most of y sits at these rates, so with it alone nothing holds y at 0 and the
  distortion's pull makes the rate climb (docs/training.md, session 16: +75% bits at λ = 0.1 after 50
  steps, at a lower PSNR).
* Each step's *true* loss (the rounded rate the coder spends and the real distortion) is computed on the
  way, and the best latents seen are kept: they never do worse on it than g_a's and h_a's own.
* Adam with a cosine learning rate to 0 over the N steps.

Photos larger than one window are refined in windows of about ``WINDOW`` y positions plus a ``HALO`` on
every side, one after the other, so memory stays bounded; a window updates only its interior and sees
its neighbours' latents (refined or not) as they stand.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .model import network_dtype
from .networks.autoencoder import decode_latent
from .networks.compression import gaussian_bits, ste_round

WINDOW = 48  # y positions (768 pixels) a window refines: a 768×512 photo is one window
HALO = 8  # y positions (128 pixels) of context on each side of a window (see test_refine: windows against one piece)
LEARNING_RATE = 0.01  # in units of y's quantisation step
SCALE_BOUND = 0.11  # the scale table's smallest scale (the coder clamps there too)
# The MS-SSIM term's weight c. On 12 whole photos at the same bytes, 25 steps with the training's 0.15 gave
# +0.43 / +0.79 / +0.57 dB but −0.001 / +0.013 / +0.013 MS-SSIM and NIQE 0.1–0.7 worse, in files a quarter
# smaller than λ's usual; with 0.6, +0.22 / +0.42 / +0.32 dB, +0.012 / +0.020 / +0.015 MS-SSIM, NIQE within
# 0.4, at about λ's usual rates (docs/training.md, session 16).
MSSSIM_WEIGHT = 0.6
MSSSIM_MIN_SIDE = 48  # the 11-pixel window at 3 scales (44 pixels); below it the distortion is the MSE alone


def trained_lambda(model, lam: float) -> float:
    """The λ whose loss the compression module was trained on where a file asks for ``lam``.

    A rate calibration (:mod:`rdeic_codec.training.rate_calibration`) resamples the gains so that the
    model's λ range covers the trained range ``old_lambda_range`` linearly in log λ; w(λ) belongs to
    the trained value.
    """
    cal = model.config.get("training", {}).get("rate_calibration")
    rng = model.compression.lambda_range
    if not cal or rng is None:
        return lam
    lo, hi = (math.log(v) for v in rng)
    old_lo, old_hi = (math.log(v) for v in cal["old_lambda_range"])
    share = (math.log(lam) - lo) / (hi - lo)
    return math.exp(old_lo + share * (old_hi - old_lo))


def distortion_weight(model, lam: float) -> float:
    """2·w(λ) of training (``distortion_scale``·λ^``distortion_power``, doubled as the training loss has it)."""
    cfg = model.compression.cfg
    return 2 * cfg.get("distortion_scale", 1.0) * trained_lambda(model, lam) ** cfg.get("distortion_power", 1.0)


def check_refinable(model) -> None:
    """Refuse a model whose hyper latent refinement cannot move (the paper design's VQ indices)."""
    if not hasattr(model.compression.quantize, "scales"):
        from .codec import CodecError

        raise CodecError("--refine needs a model with a Gaussian hyper latent (the small-hyperprior design), "
                         "not this model's vector-quantised one")


def windows(n: int) -> list[tuple[int, int, int, int]]:
    """Along an axis of ``n`` y positions: (interior start, stop, window start, stop) of each window."""
    # Cuts on multiples of 4, where h_a's two ×2 steps line up (n is one: images are padded to 64 pixels);
    # even window origins also keep a checkerboard context's anchors where the coder has them.
    count = max(1, -(-n // WINDOW))
    cuts = [4 * (i * (n // 4) // count) for i in range(count + 1)]
    return [(a, b, max(0, a - HALO), min(n, b + HALO)) for a, b in zip(cuts[:-1], cuts[1:])]


def refine(model, image: np.ndarray, y: torch.Tensor, lam: float, iterations: int, seed: int = 0,
           progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine g_a's y, and the hyper latent, for one photo at one λ.

    Args:
        model: a loaded model with a Gaussian hyper latent (the ``hyperprior`` compression module).
        image: the photo, (H, W, 3) uint8, unpadded.
        y: g_a's output for it, before the gain, (1, M, h, w) with 16·h, 16·w the padded size.
        lam: the file's λ.
        iterations: gradient steps per window (at least 1).
        seed: seeds the rate's noise.
        progress: called with (steps done, steps in all) after each step.

    Returns:
        (y, hyper): the new y before the gain, as :func:`codec.analyse_image` gives it, and the hyper
        latent before rounding, (1, C, h/4, w/4), whose rounded values the file then codes in place of
        h_a(y)'s (optimising it too was worth 0.34 dB at λ = 0.1: docs/training.md, session 16).
    """
    check_refinable(model)
    comp = model.compression
    with torch.no_grad():
        gain, inv = comp.gains(torch.tensor([lam], device=y.device))
        y_gained = (y * gain).float() if gain is not None else y.float().clone()
        hyper = comp.h_a(y_gained).float()
    rows, cols = windows(y.shape[2]), windows(y.shape[3])
    total, done = len(rows) * len(cols) * iterations, 0
    generator = torch.Generator(device="cpu").manual_seed(seed)
    loss = _WindowLoss(model, image, inv, distortion_weight(model, lam))
    for r in rows:
        for c in cols:
            with torch.enable_grad():  # callers may run under no_grad; only y and the hyper latent get gradients
                for _ in _refine_window(loss, y_gained, hyper, r, c, iterations, generator):
                    done += 1
                    if progress:
                        progress(done, total)
    return (y_gained / gain if gain is not None else y_gained), hyper


class _WindowLoss:
    """The rate–distortion loss of one window of (gained y, hyper latent): (loss for the gradient, true loss)."""

    def __init__(self, model, image: np.ndarray, inv, weight: float):
        self.model, self.image, self.inv, self.weight = model, image, inv, weight
        self.msssim_weight = MSSSIM_WEIGHT
        self.z_scales = model.compression.quantize.scales().detach().clamp_min(SCALE_BOUND)[None, :, None, None]

    def target(self, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        """The photo's pixels under y rows × cols, in [−1, 1]; the mirror padding below and right of the
        photo is left out, so it is not scored."""
        from .tiled import image_tile

        height, width = self.image.shape[:2]
        r1, c1 = min(16 * rows[1], height), min(16 * cols[1], width)
        pixels = image_tile(self.image, 16 * rows[0], r1, 16 * cols[0], c1)
        return torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1

    def __call__(self, y: torch.Tensor, hyper: torch.Tensor, target: torch.Tensor, noise: torch.Tensor):
        from .training.losses import ms_ssim_loss

        comp = self.model.compression
        z_hat = ste_round(hyper)
        z_bits = gaussian_bits(z_hat, self.z_scales).sum()
        scales, means = comp.y_parameters(y, comp.h_s(z_hat).float())
        scales = scales.abs().clamp_min(SCALE_BOUND)
        residual = ste_round(y - means)
        y_hat = residual + means
        z_c = comp.out(comp.g_s(y_hat * self.inv if self.inv is not None else y_hat))
        decoded = decode_latent(self.model.vae, z_c.to(network_dtype(self.model.vae))).float()
        decoded = decoded[..., :target.shape[2], :target.shape[3]]
        distortion = (decoded - target).pow(2).mean()
        if self.msssim_weight > 0 and min(target.shape[2:]) >= MSSSIM_MIN_SIDE:
            distortion = distortion + self.msssim_weight * ms_ssim_loss(decoded, target).mean()
        pixels = target.shape[2] * target.shape[3]
        true_bits = gaussian_bits(residual, scales).sum() + z_bits
        noisy_bits = gaussian_bits(y - means + noise, scales).sum() + z_bits
        true_loss = float((true_bits / pixels + self.weight * distortion).detach())
        return noisy_bits / pixels + self.weight * distortion, true_loss


def _refine_window(loss: _WindowLoss, y: torch.Tensor, hyper: torch.Tensor, rows, cols, iterations: int,
                   generator):
    """Refine the interior of one window of the gained ``y`` and of ``hyper`` in place; yields after each step."""
    a0, a1, w0, w1 = rows
    b0, b1, v0, v1 = cols
    z_rows, z_cols = slice(w0 // 4, w1 // 4), slice(v0 // 4, v1 // 4)  # window edges are multiples of 4
    target = loss.target((w0, w1), (v0, v1)).to(y.device)
    # Only the interior moves; the halo is context (the gradient there is zeroed).
    mask_y = torch.zeros(1, 1, w1 - w0, v1 - v0, device=y.device)
    mask_y[..., a0 - w0:a1 - w0, b0 - v0:b1 - v0] = 1
    mask_z = mask_y[..., ::4, ::4]
    var_y = y[..., w0:w1, v0:v1].clone().requires_grad_(True)
    var_z = hyper[..., z_rows, z_cols].clone().requires_grad_(True)
    adam_y, adam_z = _Adam(var_y), _Adam(var_z)
    best_loss, best = math.inf, None
    for it in range(iterations + 1):
        noise = torch.rand(var_y.shape, generator=generator).to(y.device) - 0.5
        value, true_loss = loss(var_y, var_z, target, noise)
        if true_loss < best_loss:
            best_loss, best = true_loss, (var_y.detach().clone(), var_z.detach().clone())
        if it == iterations:
            break
        # Gradients of the two latents alone: the networks' weights get none.
        grad_y, grad_z = torch.autograd.grad(value, (var_y, var_z))
        lr = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * it / iterations))
        adam_y.step(grad_y * mask_y, lr)
        adam_z.step(grad_z * mask_z, lr)
        yield it
    y[..., a0:a1, b0:b1] = best[0][..., a0 - w0:a1 - w0, b0 - v0:b1 - v0]
    hyper[..., a0 // 4:a1 // 4, b0 // 4:b1 // 4] = best[1][..., (a0 - w0) // 4:(a1 - w0) // 4,
                                                           (b0 - v0) // 4:(b1 - v0) // 4]


class _Adam:
    """Adam (Kingma and Ba, 2015) on one tensor, in place. torch.optim's first Adam imports torch._dynamo:
    2.2 s of a user's encode on the 2-core machine (measured with another process running)."""

    def __init__(self, var: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.var, self.betas, self.eps, self.t = var, betas, eps, 0
        self.m, self.v = torch.zeros_like(var), torch.zeros_like(var)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: float) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
        self.var.addcdiv_(self.m, denom, value=-lr / (1 - b1 ** self.t))
