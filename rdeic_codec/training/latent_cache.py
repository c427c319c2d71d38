"""Cache what the frozen autoencoder produces, so later CPU stages never run its encoder again.

For every training image (cropped to a multiple of 64 px, at most ``max_side``), we store the VAE
encoder feature before its last conv (float16) and the scaled latent (posterior mean, float32), of the
image and of its mirror image.

Why the mirror image is encoded rather than the latent flipped: the encoder is not mirror-equivariant
(its space-to-depth stem puts each 4×4 block's pixels in fixed channels), so a flipped latent is a
latent no photo has. On four validation crops it lay at MSE 0.05–0.45 from the mirror image's latent
(variance about 1) and decoded 18–29 dB away from the mirrored decode (docs/training.md, session 12):
caches without mirror entries (older ones) give crops without flips.
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
        for suffix, image in (("", x), (".mirror", x.flip(-1))):
            feat = encoder_feature(vae, image)
            tensors[f"{i:05d}{suffix}.feature"] = feat[0].half().contiguous()
            tensors[f"{i:05d}{suffix}.latent"] = latent_from_feature(vae, feat)[0].contiguous()
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
        flips: take the mirror image for half the crops, where the cache holds it (validation: False, so
            that its fixed crops are the same with any cache).
    """

    def __init__(self, path: str, crop: int, seed: int = 0, features: bool = True, flips: bool = True):
        raw = load_file(path)
        keys = sorted({k.split(".")[0] for k in raw})
        keys = [k for k in keys if min(raw[f"{k}.latent"].shape[1:]) >= crop]
        # Flips only where the cache holds the mirror images' latents (see the module's docstring).
        self.flips = flips and all(f"{k}.mirror.latent" in raw for k in keys)
        suffixes = ("", ".mirror") if self.flips else ("",)
        # latents[i][m]: image i (m = 0) or its mirror image (m = 1).
        self.latents = [[raw[f"{k}{s}.latent"] for s in suffixes] for k in keys]
        self.features = [[raw[f"{k}{s}.feature"] for s in suffixes] for k in keys] if features else None
        self.keys = keys  # the images' numbers in their folder (build_cache's names)
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, size: int, indices=None):
        """(latents (B,4,c,c), features (B,C,c,c) float32 or None), both at latent resolution."""
        return self._cut(self._draw_windows(size, indices))

    def _draw_windows(self, size: int, indices=None) -> list[tuple[int, int, int, int]]:
        """(image i, y, x, m) of each crop of a batch (see :meth:`_draw_window`)."""
        if indices is None:
            indices = self.rng.integers(0, len(self.latents), size)
        # Small folders repeat images.
        return [(i, *self._draw_window(i)) for i in (int(i) % len(self.latents) for i in indices)]

    def _cut(self, windows) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The latents and features (or None) of ``windows``, stacked."""
        lat, feat = [], []
        for i, y, x, m in windows:
            window = (slice(None), slice(y, y + self.crop), slice(x, x + self.crop))
            lat.append(self.latents[i][m][window])
            if self.features is not None:
                feat.append(self.features[i][m][window].float())
        return torch.stack(lat), (torch.stack(feat) if feat else None)

    def _draw_window(self, i: int) -> tuple[int, int, int]:
        """A random crop of image i: its top-left corner (y, x) in latent pixels and m (1: the mirror image)."""
        h, w = self.latents[i][0].shape[1:]
        # Offsets on the 8-latent-pixel grid keep crops aligned with the 64-pixel coding grid.
        y = 8 * int(self.rng.integers(0, (h - self.crop) // 8 + 1))
        x = 8 * int(self.rng.integers(0, (w - self.crop) // 8 + 1))
        m = int(self.rng.random() < 0.5 and self.flips)  # the mirror image (drawn either way: same crops)
        return y, x, m


class LatentPhotoCrops(LatentCrops):
    """:class:`LatentCrops` with the photo pixels under each latent crop: what a stage that compares a
    decoded image with the photo needs.

    The photos are read again from ``folder``, the folder the cache was built from, and cropped as
    :func:`build_cache` cropped them (the cache's names are their numbers in the folder), so a latent crop
    at (y, x) lies over the pixels at (8y, 8x). They are held as uint8: 0.8 GB for 1,815 photos of at most
    512×512.

    Args:
        path, crop, seed, features, flips: as :class:`LatentCrops`.
        folder: the image folder the cache was built from.
        max_side: the cache's ``max_side``.
    """

    def __init__(self, path: str, folder: str, crop: int, seed: int = 0, features: bool = True,
                 flips: bool = True, max_side: int = 512):
        super().__init__(path, crop, seed, features, flips)
        paths = list_images(folder)
        self.photos = []
        for k, latent in zip(self.keys, self.latents):
            im = _center_crop(load_rgb(paths[int(k)]), 64, max_side) if int(k) < len(paths) else None
            if im is None or tuple(im.shape[:2]) != tuple(8 * n for n in latent[0].shape[1:]):
                raise ValueError(f"{path} was not built from {folder}: image {k} does not match its latent")
            self.photos.append(np.array(im, copy=True))  # writable: tensors are made from views of it

    def batch(self, size: int, indices=None):
        """(latents (B,C,c,c), features or None, photos (B,3,8c,8c) in [-1, 1]) of the same crops."""
        windows = self._draw_windows(size, indices)
        pix = []
        for i, y, x, m in windows:
            photo = self.photos[i][:, ::-1] if m else self.photos[i]
            pix.append(torch.from_numpy(np.ascontiguousarray(photo[8 * y : 8 * (y + self.crop), 8 * x : 8 * (x + self.crop)])))
        photos = torch.stack(pix).permute(0, 3, 1, 2).float() / 127.5 - 1
        return (*self._cut(windows), photos)
