"""Cache what the frozen autoencoder produces, so later CPU stages never run its encoder again.

For every training image (cropped to a multiple of 64 px, at most ``max_side``), we store the VAE
encoder feature before its last conv (float16) and the scaled latent (posterior mean, float32).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..networks.autoencoder import encoder_feature, latent_from_feature
from .data import list_images, load_rgb


def _center_crop(im: np.ndarray, multiple: int, max_side: int) -> np.ndarray:
    h, w = im.shape[:2]
    th, tw = min(h, max_side) // multiple * multiple, min(w, max_side) // multiple * multiple
    y, x = (h - th) // 2, (w - tw) // 2
    return im[y : y + th, x : x + tw]


@torch.no_grad()
def build_cache(vae, folder: str, path: str, max_side: int = 512, log=print) -> None:
    """Encode every image of ``folder`` once; write ``path`` (safetensors)."""
    if os.path.exists(path):
        return
    tensors = {}
    paths = list_images(folder)
    for i, p in enumerate(paths):
        im = _center_crop(load_rgb(p), 64, max_side)
        if min(im.shape[:2]) < 64:
            continue
        x = torch.from_numpy(np.array(im, copy=True)).permute(2, 0, 1)[None].float() / 127.5 - 1
        feat = encoder_feature(vae, x)
        tensors[f"{i:05d}.feature"] = feat[0].half().contiguous()
        tensors[f"{i:05d}.latent"] = latent_from_feature(vae, feat)[0].contiguous()
        if (i + 1) % 200 == 0:
            log(f"cached {i + 1}/{len(paths)} images")
    tmp = f"{path}.{os.getpid()}.tmp"  # two stages may build the same cache at once
    save_file(tensors, tmp)
    os.replace(tmp, path)


class LatentCrops:
    """Random aligned crops of cached (feature, latent) pairs.

    Args:
        path: a cache written by :func:`build_cache`.
        crop: crop side in latent pixels (a multiple of 8, i.e. 64 image pixels).
        features: also return the VAE features (stage 1 needs them; the base denoiser does not).
    """

    def __init__(self, path: str, crop: int, seed: int = 0, features: bool = True):
        raw = load_file(path)
        keys = sorted({k.split(".")[0] for k in raw})
        self.latents = [raw[f"{k}.latent"] for k in keys]
        self.features = [raw[f"{k}.feature"] for k in keys] if features else None
        keep = [i for i, z in enumerate(self.latents) if min(z.shape[1:]) >= crop]
        self.latents = [self.latents[i] for i in keep]
        if self.features is not None:
            self.features = [self.features[i] for i in keep]
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, size: int, indices=None):
        """(latents (B,4,c,c), features (B,C,c,c) float32 or None), both at latent resolution."""
        if indices is None:
            indices = self.rng.integers(0, len(self.latents), size)
        indices = [int(i) % len(self.latents) for i in indices]  # small folders repeat images
        lat, feat = [], []
        for i in indices:
            z = self.latents[int(i)]
            h, w = z.shape[1:]
            # Offsets on the 8-latent-pixel grid keep crops aligned with the 64-pixel coding grid.
            y = 8 * int(self.rng.integers(0, (h - self.crop) // 8 + 1))
            x = 8 * int(self.rng.integers(0, (w - self.crop) // 8 + 1))
            flip = self.rng.random() < 0.5
            zc = z[:, y : y + self.crop, x : x + self.crop]
            lat.append(zc.flip(-1) if flip else zc)
            if self.features is not None:
                fc = self.features[int(i)][:, y : y + self.crop, x : x + self.crop].float()
                feat.append(fc.flip(-1) if flip else fc)
        return torch.stack(lat), (torch.stack(feat) if feat else None)
