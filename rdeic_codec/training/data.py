"""Image folders as training data: every image decoded once into memory, random crops and flips."""

from __future__ import annotations

import os

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """A training folder that cannot be used (no images, or none large enough)."""


def list_images(folder: str) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise DataError(f"no images in {folder}")
    return [os.path.join(folder, n) for n in names]


def load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class ImageFolderCrops:
    """All images of a folder in memory; :meth:`batch` draws random crops.

    Args:
        folder: folder of images.
        crop: side of the square crops; images with a smaller side are skipped.
        seed: seed of the crop generator, so runs are repeatable.
        limit: use only the first ``limit`` images (None: all).
    """

    def __init__(self, folder: str, crop: int, seed: int = 0, limit: int | None = None):
        paths = list_images(folder)[:limit]
        self.images = [im for im in (load_rgb(p) for p in paths) if min(im.shape[:2]) >= crop]
        if not self.images:
            raise DataError(f"no image in {folder} has a side of at least {crop} px")
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def crop_at(self, index: int) -> np.ndarray:
        im = self.images[index]
        h, w = im.shape[:2]
        y = int(self.rng.integers(0, h - self.crop + 1))
        x = int(self.rng.integers(0, w - self.crop + 1))
        out = im[y : y + self.crop, x : x + self.crop]
        if self.rng.random() < 0.5:
            out = out[:, ::-1]
        return out

    def center_batch(self, side: int) -> torch.Tensor:
        """The central side×side crop of every image (smaller images are skipped), in [-1, 1]."""
        crops = []
        for im in self.images:
            h, w = im.shape[:2]
            if min(h, w) >= side:
                y, x = (h - side) // 2, (w - side) // 2
                crops.append(im[y : y + side, x : x + side])
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def batch(self, size: int, indices=None) -> torch.Tensor:
        """A (size, 3, crop, crop) float batch in [-1, 1]."""
        if indices is None:
            indices = self.rng.integers(0, len(self.images), size)
        indices = [int(i) % len(self.images) for i in indices]  # small folders repeat images
        arr = np.stack([self.crop_at(int(i)) for i in indices])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
