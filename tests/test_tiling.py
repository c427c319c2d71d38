"""Tiled coding (rdeic_codec/tiling.py, rdeic_codec/tiled.py) at small tile sizes, against untiled coding.

The tiny model's tiles are set through ``config["tiling"]`` (pixels), so that images of a few hundred
pixels cross several tile borders in every stage.
"""

import os

import numpy as np
import pytest
import torch

from rdeic_codec import codec, tiled
from rdeic_codec.tiling import TilePlan, axis_weights, run_tiled, spans

from conftest import SHIPPED_MODEL, sample_photo, smooth_image

UNTILED = {"encoder": (1 << 20, 0), "denoiser": (1 << 20, 0), "decoder": (1 << 20, 0),
           "compression": 1 << 20, "entropy": 1 << 20}
SMALL_TILES = {"encoder": (192, 64), "denoiser": (192, 64), "decoder": (128, 32), "compression": 512,
               "entropy": 320}


@pytest.fixture(params=["tiny_model", "tiny_shuffle_model"])
def tiling(request):
    """Set a tiny model's tiles for one test (the config is restored afterwards); each test runs with
    SD's autoencoder layout and with the small profile's ShuffleAutoencoder."""
    tiny_model = request.getfixturevalue(request.param)
    saved = tiny_model.config.get("tiling")

    def use(tiles):
        tiny_model.config["tiling"] = dict(tiles)
        return tiny_model

    yield use
    if saved is None:
        tiny_model.config.pop("tiling", None)
    else:
        tiny_model.config["tiling"] = saved


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("n,tile,overlap", [(10, 4, 2), (100, 32, 8), (33, 32, 8), (257, 64, 12), (5, 8, 2)])
def test_tiles_cover_the_axis_and_weights_sum_to_one(n, tile, overlap):
    extents = spans(n, tile, overlap)
    assert extents[0][0] == 0 and extents[-1][1] == n
    assert all(b - a == min(tile, n) for a, b in extents)
    assert all(prev[1] - nxt[0] >= overlap for prev, nxt in zip(extents, extents[1:]))
    for plan in (TilePlan.exact(tile, overlap // 2), TilePlan.blended(tile, overlap)):
        total = np.zeros(2 * n)
        for (a, _), w in zip(extents, axis_weights(n, extents, plan, 2)):
            total[2 * a : 2 * a + len(w)] += w
        assert np.allclose(total, 1.0)


def test_exact_tiles_with_the_derived_halo_equal_the_untiled_network(tiny_model):
    """g_s and h_s tiled with the halo of their receptive field give the untiled result; a halo one
    position short does not (float64, so that what reaches past the short halo is above rounding)."""
    import copy

    torch.manual_seed(0)
    comp = copy.deepcopy(tiny_model.compression).double()
    y = torch.randn(1, comp.cfg["M"], 40, 36, dtype=torch.float64)
    lam = torch.tensor([0.5], dtype=torch.float64)
    with torch.no_grad():
        ref = comp.synthesise(y, lam)
        halo = tiled._halo(torch.nn.Sequential(*comp.g_s, comp.out))

        def run(h):
            return run_tiled(lambda r0, r1, c0, c1: comp.synthesise(y[..., r0:r1, c0:c1], lam), 40, 36,
                             TilePlan.exact(2 * h + 4, h), 2)

        for got, want in zip(run(halo), ref):
            assert torch.allclose(got, want, rtol=0, atol=1e-12)
        assert (run(halo - 1)[0] - ref[0]).abs().max() > 1e-11
        z_hat = torch.randn(1, comp.cfg["hyper_channels"], 10, 9, dtype=torch.float64)
        h_s = tiny_model.entropy_path()["h_s"]
        halo = tiled._halo(h_s)
        tiled_hyper = run_tiled(lambda r0, r1, c0, c1: h_s(z_hat[..., r0:r1, c0:c1]), 10, 9,
                                TilePlan.exact(2 * halo + 2, halo), 4)
        assert torch.allclose(tiled_hyper, h_s(z_hat), rtol=0, atol=1e-12)


def test_tiled_entropy_path_writes_the_untiled_bitstream(tiling):
    """Blocks of the float64 entropy-parameter path (a function of the image size, the same in the
    encoder and decoder) give the same entropy parameters as one block: the same bytes."""
    image = smooth_image(700, 900, seed=3)
    untiled = codec.encode(tiling(UNTILED), image, 0.5).data
    blocks = dict(UNTILED, entropy=320)
    data = codec.encode(tiling(blocks), image, 0.5).data
    assert data == untiled
    assert np.array_equal(codec.decode(tiling(blocks), data, steps=0), codec.decode(tiling(UNTILED), data, steps=0))


def test_fully_tiled_round_trip_is_close_to_untiled(tiling):
    """Every stage in tiles: the file decodes (encoder and decoder agree on every parameter), to the
    original size, and close to the untiled decode of the same file."""
    image = smooth_image(384, 576, seed=4)
    data = codec.encode(tiling(SMALL_TILES), image, 0.5).data
    ref = codec.decode(tiling(UNTILED), data, steps=2)
    out = codec.decode(tiling(SMALL_TILES), data, steps=2)
    assert out.shape == image.shape
    # The tiny model's group norms see each tile's statistics, so tiled is close, not equal: 24.4 dB
    # measured at these 128-192 px tiles, where the same output shifted by one pixel scores 17.8 dB.
    assert psnr(out, ref) > 22
    assert np.array_equal(out, codec.decode(tiling(SMALL_TILES), data, steps=2))  # still deterministic


def test_image_within_one_tile_is_coded_as_without_tiling(tiling):
    image = smooth_image(200, 300, seed=5)
    data = codec.encode(tiling(UNTILED), image, 1.0).data
    assert codec.encode(tiling(tiled.TILES), image, 1.0).data == data
    assert np.array_equal(codec.decode(tiling(tiled.TILES), data, steps=2),
                          codec.decode(tiling(UNTILED), data, steps=2))


@pytest.mark.skipif(not os.path.isdir(SHIPPED_MODEL), reason="needs the shipped model")
def test_no_seams_with_the_shipped_model_at_small_tiles():
    """A real photo through the shipped model with 256-px tiles: PSNR within 32-px bands along the
    tile borders is within 0.3 dB of the whole image's, and the whole image within 0.3 dB of untiled."""
    from PIL import Image

    from rdeic_codec.model import load_model

    model = load_model(SHIPPED_MODEL)
    photo = Image.open(sample_photo("gb82_city.png")).convert("RGB")
    image = np.asarray(photo.resize((768, 512), Image.LANCZOS))
    reference = codec.decode(model, codec.encode(model, image, 0.5).data, steps=2)
    model.config["tiling"] = {"encoder": (256, 64), "denoiser": (256, 64), "decoder": (256, 64)}
    out = codec.decode(model, codec.encode(model, image, 0.5).data, steps=2)
    rows, cols = tiled.seams(model, 512, 768)
    assert rows and cols
    band = np.zeros((512, 768), dtype=bool)
    for r in rows:
        band[r - 16 : r + 16] = True
    for c in cols:
        band[:, c - 16 : c + 16] = True
    whole = psnr(out, image)
    assert psnr(out[band], image[band]) > whole - 0.3
    assert whole > psnr(reference, image) - 0.3
