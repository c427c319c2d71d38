"""Relay residual diffusion (RDEIC method file, sections 4 and 5).

Decoding starts from the compressed latent z_c instead of pure noise:
x_N = √ᾱ_N·z_c + √(1−ᾱ_N)·ξ with N = ``relay_start`` (the paper's 299; 150 in the small profile), then
a respaced DDPM (ancestral, "fixed small" variance, no clipping) over the first N + 1 of SD's 1000
steps. From t = 299, 2 steps visit t = 299, 0 and 5 steps t = 299, 224, 150, 75, 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_STEPS = 10


def alphas_cumprod(cfg: dict) -> np.ndarray:
    """SD's ᾱ_t (float64): β_t = linspace(√β_start, √β_end, T)², ᾱ_t = Π(1 − β)."""
    betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, cfg["num_train_timesteps"]) ** 2
    return np.cumprod(1.0 - betas)


def relay_timesteps(steps: int, start: int = 299) -> list[int]:
    """The visited timesteps, evenly spaced from ``start`` down to 0 (2 → [299, 0]; 5 → [299, 224, 150, 75, 0])."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if steps == 1:
        return [start]
    return [int(round(v)) for v in np.linspace(start, 0, steps)]


@dataclass(frozen=True)
class StepCoefficients:
    t: int
    alpha_bar: float
    c1: float  # multiplies ẑ0 in the posterior mean
    c2: float  # multiplies x_t
    sigma: float  # posterior standard deviation (0 at the last step)


def step_coefficients(cfg: dict, steps: int) -> list[StepCoefficients]:
    """Per-step DDPM posterior coefficients for the respaced schedule."""
    ab = alphas_cumprod(cfg)
    ts = relay_timesteps(steps, cfg["relay_start"])
    out = []
    for k, t in enumerate(ts):
        a_t = ab[t]
        a_prev = ab[ts[k + 1]] if k + 1 < len(ts) else 1.0
        beta = 1.0 - a_t / a_prev
        c1 = beta * np.sqrt(a_prev) / (1.0 - a_t)
        c2 = (1.0 - a_prev) * np.sqrt(1.0 - beta) / (1.0 - a_t)
        sigma = np.sqrt(beta * (1.0 - a_prev) / (1.0 - a_t)) if k + 1 < len(ts) else 0.0
        out.append(StepCoefficients(t, float(a_t), float(c1), float(c2), float(sigma)))
    return out


def relay_start(cfg: dict, z_c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_N = √ᾱ_N·z_c + √(1−ᾱ_N)·ξ."""
    a = float(alphas_cumprod(cfg)[cfg["relay_start"]])
    return a**0.5 * z_c + (1 - a) ** 0.5 * noise


def predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """ẑ0 = x/√ᾱ − √(1/ᾱ − 1)·ε̂."""
    return x / alpha_bar**0.5 - (1.0 / alpha_bar - 1.0) ** 0.5 * eps


PREDICTION_TYPES = ("epsilon", "sample")


def relay_sample(cfg: dict, z_c: torch.Tensor, model_fn, steps: int, generator: torch.Generator,
                 progress=None, prediction_type: str = "epsilon") -> torch.Tensor:
    """Run the relay sampler.

    Args:
        cfg: the ``diffusion`` section of a profile.
        z_c: (B, 4, h, w) latent predicted by the compression module.
        model_fn: ``model_fn(x, t)`` → the controlled UNet's prediction, with detail guidance applied.
        steps: number of denoising steps (1..10).
        generator: a CPU generator; all noise is drawn on the CPU so that it is the same on every device.
        progress: optional callable(k, steps) called after each step.
        prediction_type: what ``model_fn`` returns (diffusers' names): the noise ε̂ (``"epsilon"``, the
            paper's) or the latent ẑ0 itself (``"sample"``, the anchored control module's).

    Returns:
        the denoised latent ẑ0.
    """
    def noise_like(x):
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)

    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}")
    x = relay_start(cfg, z_c, noise_like(z_c))
    coeffs = step_coefficients(cfg, steps)
    for k, co in enumerate(coeffs):
        out = model_fn(x, co.t)
        x0 = predict_x0(x, out, co.alpha_bar) if prediction_type == "epsilon" else out
        x = co.c1 * x0 + co.c2 * x
        if co.sigma > 0:
            x = x + co.sigma * noise_like(x)
        if progress is not None:
            progress(k + 1, steps)
    return x
