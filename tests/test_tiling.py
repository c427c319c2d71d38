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


@pytest.fixture(params=["tiny_model", "tiny_shuffle_model", "tiny_hyperprior_model"])
def tiling(request):
    """Set a tiny model's tiles for one test (the config is restored afterwards); each test runs with
    SD's autoencoder layout, with the small profile's ShuffleAutoencoder, and with that and the
    hyperprior compression module."""
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


@pytest.fixture(scope="module")
def tiny_plain_hyperprior_model():
    """The tiny hyperprior model with the small profile's plain residual blocks."""
    from rdeic_codec.model import RDEICModel
    from rdeic_codec.profiles import get_profile

    config = get_profile("tiny-hyperprior")
    config["compression"]["blocks"] = "plain"
    torch.manual_seed(0)
    return RDEICModel(config).eval()


@pytest.mark.parametrize("name", ["tiny_model", "tiny_hyperprior_model", "tiny_plain_hyperprior_model"])
def test_exact_tiles_with_the_derived_halo_equal_the_untiled_network(name, request):
    """g_s and h_s tiled with the halo of their receptive field give the untiled result; a halo one
    position short does not (float64, so that what reaches past the short halo is above rounding)."""
    import copy

    tiny_model = request.getfixturevalue(name)
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


class _WholeImageContext:
    """The entropy context as it was computed before streaming (reference for the test below): every
    intermediate a whole-image float64 tensor, stitched by the same tiles."""

    def __init__(self, context, block):
        self.context, self.block, self.slices = context, block, context.slices

    def _run(self, fn, like, halo):
        return run_tiled(fn, like.shape[-2], like.shape[-1], tiled._exact(self.block, halo), 1)

    def walk(self, hyper, table, code_pass):
        from rdeic_codec.networks.compression import anchor_mask

        ctx, (_, _, h, w) = self.context, hyper.shape
        anchors = anchor_mask(h, w, dtype=torch.float64)
        is_anchor = anchors.bool()[0, 0].numpy()
        y_hat_all = torch.zeros(1, sum(self.slices), h, w, dtype=torch.float64)
        starts = np.cumsum([0] + list(self.slices))
        for i, ch in enumerate(self.slices):
            shared = [hyper]
            if i:
                net, prev = ctx.channel_context[i], y_hat_all[:, : starts[i]]
                shared.insert(0, self._run(lambda r0, r1, c0, c1: net(prev[..., r0:r1, c0:c1].contiguous()),
                                           hyper, tiled._halo(net)))
            y_hat = y_hat_all[:, starts[i] : starts[i + 1]]
            for positions, anchor in ((is_anchor, True), (~is_anchor, False)):
                if anchor:
                    scales, means = self._run(
                        lambda r0, r1, c0, c1: ctx.anchor_params(i, [s[..., r0:r1, c0:c1] for s in shared]), hyper, 0)
                else:
                    a_hat = y_hat * anchors
                    scales, means = self._run(lambda r0, r1, c0, c1: ctx.nonanchor_params(
                        i, [s[..., r0:r1, c0:c1] for s in shared], a_hat[..., r0:r1, c0:c1]),
                        hyper, tiled._halo(ctx.local_context[i]))
                sel = np.broadcast_to(positions, (ch, h, w))
                mu = table.snap_mean(means[0])[sel]
                y_hat[0].numpy()[sel] = code_pass(slice(starts[i], starts[i + 1]), positions,
                                                  table.scale_index(scales[0])[sel], mu) + mu
        return y_hat_all


@pytest.mark.parametrize("entropy", [256, 384])
def test_streamed_entropy_path_equals_whole_image_tensors(tiny_model, entropy):
    """h_s's output written to a file and read back by window, ŷ kept in float32 and the parameters
    reduced band by band give bitwise the scale indices, means and ŷ of whole-image float64 tensors
    stitched by the same tiles (the computation before streaming)."""
    from rdeic_codec.entropy.latent_coder import walk_slices
    from rdeic_codec.entropy.tables import ScaleTable

    saved = tiny_model.config.get("tiling")
    tiny_model.config["tiling"] = {"entropy": entropy}
    try:
        path = tiny_model.entropy_path()
        gen = torch.Generator().manual_seed(7)
        idx = torch.randint(0, path["quantize"].embedding.weight.shape[0], (1, 11, 13), generator=gen)
        hyper = tiled.hyper_parameters(tiny_model, idx)
        assert hyper._file is not None  # more than one block: the spilled store
        block = tiled.entropy_block(tiny_model)
        z_hat = path["quantize"].lookup(idx, torch.float64)
        whole = run_tiled(lambda r0, r1, c0, c1: path["h_s"](z_hat[..., r0:r1, c0:c1]), 11, 13,
                          tiled._exact(block // 4, tiled._halo(path["h_s"])), 4)
        assert torch.equal(hyper.window(0, 44, 0, 52), whole)
        assert torch.equal(hyper.window(5, 30, 17, 41), whole[..., 5:30, 17:41])
        y = 3 * torch.randn(1, sum(path["context"].slices), 44, 52, generator=gen)
        table = ScaleTable(tiny_model.config["entropy"])
        got, want = [], []

        def coder(log):
            state = {"n": 0}

            # Rounds a fixed stream of values, as the encoder rounds y.
            def code_pass(channels, positions, scale_idx, mu):
                log.append((channels, positions.copy(), scale_idx.copy(), mu.copy()))
                values = y.numpy().reshape(-1)[state["n"] : state["n"] + len(mu)]
                state["n"] += len(mu)
                return np.rint(values - mu).astype(np.int32)

            return code_pass

        with torch.no_grad():
            streamed = walk_slices(tiled.TiledContext(path["context"], block), hyper, table, coder(got))
            reference = _WholeImageContext(path["context"], block).walk(whole, table, coder(want))
        assert streamed.dtype == torch.float32
        assert torch.equal(streamed.double(), reference)
        assert len(got) == len(want) == 2 * len(path["context"].slices)
        for (gc, gp, gi, gm), (wc, wp, wi, wm) in zip(got, want):
            assert gc == wc and np.array_equal(gp, wp)
            assert np.array_equal(gi, wi) and np.array_equal(gm, wm)
        hyper.close()
    finally:
        tiny_model.config["tiling"] = saved
        if saved is None:
            tiny_model.config.pop("tiling")


def test_latent_store_widens_to_float64_when_float32_would_round():
    from rdeic_codec.entropy.latent_coder import LatentStore

    store = LatentStore(2, 2, 2)
    first = np.eye(2, dtype=bool)
    store.write(slice(0, 1), first, np.array([1.5, -3.00390625]))
    assert store.tensor.dtype == torch.float32
    store.write(slice(1, 2), first, np.array([2.0**24 + 1, 0.25]))  # not a float32
    assert store.tensor.dtype == torch.float64
    assert store.tensor[0, 0, 0, 0] == 1.5 and store.tensor[0, 0, 1, 1] == -3.00390625
    assert store.tensor[0, 1, 0, 0] == 2.0**24 + 1 and store.tensor[0, 1, 1, 1] == 0.25
