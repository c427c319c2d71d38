"""Shared fixtures: a tiny random-weight model (diffusers-style tiny test config) and the shipped model."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_MODEL = os.path.join(ROOT, "models", "rdeic-small")
# Three CC0 photos shipped with the repository (samples/README.md): the real photos tests use.
SAMPLES = os.path.join(ROOT, "samples")


def sample_photo(name: str = "gb82_city.png") -> str:
    return os.path.join(SAMPLES, name)


def make_tiny_model(folder: str, seed: int = 0, profile: str = "tiny") -> str:
    from rdeic_codec.model import RDEICModel, save_model
    from rdeic_codec.profiles import get_profile

    torch.manual_seed(seed)
    model = RDEICModel(get_profile(profile))
    # Non-zero control, so tests see the control path do something.
    for conv in list(model.control.enc_zero_convs) + [model.control.middle_zero_conv] + list(model.control.dec_zero_convs):
        torch.nn.init.normal_(conv.weight, std=0.05)
    for net in getattr(model.compression.context, "corrections", lambda: [])():
        # A hyperprior context's corrections start at zero: make them move the parameters, as trained ones do.
        torch.nn.init.normal_(net[-1].weight, std=0.05)
    save_model(model, folder, name=f"{profile}-test")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_shuffle_model(tmp_path_factory):
    """The tiny model with the small profile's autoencoder (ShuffleAutoencoder)."""
    from rdeic_codec.model import load_model

    return load_model(make_tiny_model(str(tmp_path_factory.mktemp("tiny-shuffle")), profile="tiny-shuffle"))


@pytest.fixture(scope="session")
def tiny_hyperprior_model(tmp_path_factory):
    """The tiny model with the small profile's autoencoder and the hyperprior compression module."""
    from rdeic_codec.model import load_model

    return load_model(make_tiny_model(str(tmp_path_factory.mktemp("tiny-hyperprior")), profile="tiny-hyperprior"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from rdeic_codec.model import load_model

    return load_model(tiny_model_dir)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic photo-like image: smooth gradients plus a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], axis=2)
    img = 127 + 90 * base + rng.normal(0, 8, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def src_png(tmp_path):
    """A small synthetic PNG in the test's folder (the input of the CLI fault tests)."""
    from PIL import Image

    path = tmp_path / "in.png"
    Image.fromarray(smooth_image(24, 40)).save(path)
    return path
