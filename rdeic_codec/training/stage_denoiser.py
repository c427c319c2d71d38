"""Stage "denoiser": the base latent diffusion UNet (the "frozen SD" of the method) for the small profile.

An unconditional diffusers ``UNet2DConditionModel`` on the autoencoder's scaled latents, with SD's
schedule and epsilon prediction, and a learned constant cross-attention context (SD's is the empty
prompt's text embedding). The relay decoder only ever runs it at t ≤ 299, so training draws t from
0..299 most of the time and from the whole schedule otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..networks.control import build_unet, unet_forward
from ..sampler import alphas_cumprod
from .latent_cache import LatentCrops
from .loop import Trainer

RELAY_FRACTION = 0.8


class BaseDenoiser(torch.nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.unet = build_unet(config["unet"])
        self.unet.register_buffer("context", torch.zeros(config["context_shape"]))
        self.context = torch.nn.Parameter(0.02 * torch.randn(config["context_shape"]))


def sample_timesteps(n: int, relay_start: int, total: int, generator) -> torch.Tensor:
    relay = torch.randint(0, relay_start + 1, (n,), generator=generator)
    full = torch.randint(0, total, (n,), generator=generator)
    pick = torch.rand(n, generator=generator) < RELAY_FRACTION
    return torch.where(pick, relay, full)


def denoiser_loss(model: BaseDenoiser, z: torch.Tensor, ab: torch.Tensor, t: torch.Tensor, generator):
    eps = torch.randn(z.shape, generator=generator).to(z.device)  # CPU generator: the same noise on any device
    a = ab[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * z + (1 - a).sqrt() * eps
    return F.mse_loss(unet_forward(model.unet, x_t, t, model.context).float(), eps)  # float32 under autocast


def train_denoiser(config: dict, cache_path: str, valid_cache: str, work_dir: str, steps: int, batch: int = 16,
                   crop: int = 32, lr: float = 2e-4, seed: int = 0, save_every: int = 300):
    torch.manual_seed(seed)
    model = BaseDenoiser(config)
    trainer = Trainer("denoiser", work_dir, {"denoiser": model}, steps, lr, clip=1.0, save_every=save_every)
    data = LatentCrops(cache_path, crop, seed=trainer.seed(seed), features=False)
    valid = LatentCrops(valid_cache, crop, seed=1, features=False, flips=False)
    dcfg = config["diffusion"]
    dev = trainer.device
    ab = torch.tensor(alphas_cumprod(dcfg), dtype=torch.float32, device=dev)
    gen = torch.Generator().manual_seed(trainer.seed(seed))
    z_valid = valid.batch(16, indices=range(16))[0].to(dev)  # the same crops at every validation

    def draw():
        z, _ = data.batch(batch)
        t = sample_timesteps(batch, dcfg["relay_start"], dcfg["num_train_timesteps"], gen)
        return z.to(dev), t.to(dev)

    def validate() -> str:
        g = torch.Generator().manual_seed(0)
        vloss = np.mean([denoiser_loss(model, z_valid, ab, torch.full((16,), tv, device=dev), g).item()
                         for tv in (0, 75, 150, 224, 299)])
        return f"eps-mse (t ≤ 299) {vloss:.4f}"

    trainer.run(lambda z, t: (denoiser_loss(model, z, ab, t, gen), {}), draw, validate)
    return model
