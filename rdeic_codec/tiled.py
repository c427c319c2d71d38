"""The codec's stages in tiles (see :mod:`rdeic_codec.tiling`), so that a 24-megapixel photo encodes and
decodes in bounded memory and in time linear in its pixels.

Which networks see how far, and how each is tiled:

* autoencoder encoder + g_a (image → y at 1/16) and the autoencoder decoder (latent → image): blended
  tiles. diffusers' ``AutoencoderKL`` group-normalises over the whole input, so no halo makes it exact;
  the cross-fade hides the seam. The autoencoder is reached only through
  :mod:`rdeic_codec.networks.autoencoder`; tile sizes and overlaps come from :data:`TILES` or the
  model's ``config["tiling"]``.
* UNet + control module (at 1/8, every step): blended tiles of the noise prediction ε̂. Attention and
  group norm see the whole tile. The sampler itself, and its noise, stay at full latent size (small),
  so the noise at a position does not depend on the tiling.
* h_a, h_s, g_s and the entropy context networks: exact tiles with a halo of their receptive field
  (:func:`rdeic_codec.tiling.receptive_radius`), equal to the untiled result up to float rounding.
  The entropy-parameter path (h_s and the context networks, float64 on the CPU) must be computed
  identically by encoder and decoder: its tiles are a function of the image size only (blocks of
  ``entropy`` pixels, docs/format.md), and images whose coded size fits one block are computed in one
  piece, exactly as before tiling existed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .model import network_dtype
from .networks.autoencoder import decode_latent, encoder_feature
from .tiling import TilePlan, receptive_radius, run_tiled

# Tile length and overlap in pixels of the image. "entropy" is part of the file format: changing it
# changes how images larger than it decode (docs/format.md).
TILES = {
    "encoder": (1024, 128),
    "denoiser": (1024, 128),
    "decoder": (768, 128),
    "compression": 4096,
    "entropy": 2048,
}
# SD's VAE and UNet at their native 512 px (diffusers' own VAE tiling uses 512 px with a 25% overlap).
PAPER_TILES = {"encoder": (512, 128), "denoiser": (512, 128), "decoder": (512, 128)}


def tiles(model) -> dict:
    """The model's tile sizes: the defaults, the paper profile's, then ``config["tiling"]`` overrides."""
    out = dict(TILES)
    if model.config.get("profile") == "paper":
        out.update(PAPER_TILES)
    out.update(model.config.get("tiling") or {})
    return out


def _blended(pair, unit: int) -> TilePlan:
    tile, overlap = pair
    return TilePlan.blended(max(tile // unit, 1), overlap // unit)


def _halo(*modules) -> int:
    return math.ceil(sum(receptive_radius(m) for m in modules))


def _exact(block: int, halo: int) -> TilePlan:
    """Exact tiles of ``block`` units; a halo too large for the block is cut (tiles then only
    approximate the untiled result, still as a function of the sizes alone)."""
    return TilePlan.exact(block, min(halo, (block - 1) // 2))


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """numpy's "symmetric" padding as indices: ... 1 0 | 0 1 … n−1 | n−1 n−2 ..."""
    j = index % (2 * n)
    return np.where(j < n, j, 2 * n - 1 - j)


def image_tile(image: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Pixels r0…r1−1 × c0…c1−1 of the image mirror-padded on the bottom and right (as ``pad_image``)."""
    h, w = image.shape[:2]
    if r1 <= h and c1 <= w:
        return image[r0:r1, c0:c1]
    return image[_reflect(np.arange(r0, r1), h)[:, None], _reflect(np.arange(c0, c1), w)[None, :]]


# -- encoder -------------------------------------------------------------------------------------

def analysis_transform(model, image: np.ndarray, padded: tuple[int, int], to_tensor) -> torch.Tensor:
    """Image → y at 1/16 before the λ gain, in blended tiles: the part of encoding that does not
    depend on λ (a search over λ can keep it).

    Args:
        model: the model.
        image: (H, W, 3) uint8, not padded.
        padded: (height, width) padded to multiples of 64.
        to_tensor: uint8 (h, w, 3) array → (1, 3, h, w) network input on the device.
    """
    comp = model.compression
    vae_dtype = network_dtype(model.vae)

    def y_tile(r0, r1, c0, c1):
        x = to_tensor(image_tile(image, 16 * r0, 16 * r1, 16 * c0, 16 * c1))
        feature = encoder_feature(model.vae, x.to(vae_dtype)).float()  # float16 VAE: see use_half
        return comp.g_a(feature * comp.cfg["feature_scale"])

    ph, pw = padded
    return run_tiled(y_tile, ph // 16, pw // 16, _blended(tiles(model)["encoder"], 16), 1)


def gain_and_indices(model, y: torch.Tensor, lam_t: torch.Tensor):
    """y before the gain → (gained y, VQ indices at 1/64); h_a in exact tiles."""
    comp = model.compression
    gain, _ = comp.gains(lam_t)
    if gain is not None:
        y = y * gain
    block = tiles(model)["compression"] // 64
    z = run_tiled(lambda r0, r1, c0, c1: comp.h_a(y[..., 4 * r0 : 4 * r1, 4 * c0 : 4 * c1]),
                  y.shape[2] // 4, y.shape[3] // 4, _exact(block, math.ceil(_halo(comp.h_a) / 4)), 1)
    return y, comp.quantize.indices(z)


# -- entropy-parameter path (float64, CPU; identical on both sides) -------------------------------

def entropy_block(model) -> int:
    """Side of the entropy path's blocks at 1/16 (a multiple of 4, so that h_s blocks align)."""
    block = tiles(model)["entropy"]
    if block % 64 or block <= 0:
        raise ValueError(f"tiling.entropy must be a positive multiple of 64, got {block}")
    return block // 16


def hyper_parameters(model, indices: torch.Tensor) -> torch.Tensor:
    """VQ indices (1, h, w) → h_s output (1, 2M, 4h, 4w) float64, in blocks of the entropy block."""
    path = model.entropy_path()
    z_hat = path["quantize"].lookup(indices, torch.float64)
    h_s = path["h_s"]
    block = entropy_block(model) // 4
    plan = _exact(block, _halo(h_s))
    return run_tiled(lambda r0, r1, c0, c1: h_s(z_hat[..., r0:r1, c0:c1]), z_hat.shape[2], z_hat.shape[3], plan, 4)


class TiledContext:
    """The entropy context networks (:class:`~rdeic_codec.networks.compression.EntropyContext`'s
    interface, as :func:`~rdeic_codec.entropy.latent_coder.walk_slices` calls it), evaluated in blocks:
    the channel context with a halo of its three 5×5 convolutions, the spatial context with its 5×5
    one, the 1×1 parameter networks per block. A grid within one block is computed in one piece."""

    def __init__(self, context, block: int):
        self.context, self.block = context, block
        self.slices = context.slices

    def _run(self, fn, like: torch.Tensor, halo: int):
        h, w = like.shape[-2:]
        return run_tiled(fn, h, w, _exact(self.block, halo), 1)

    def slice_inputs(self, i, hyper, previous):
        if i == 0:
            return [hyper]
        net = self.context.channel_context[i]
        cc = self._run(lambda r0, r1, c0, c1: net(torch.cat([p[..., r0:r1, c0:c1] for p in previous], dim=1)),
                       hyper, _halo(net))
        return [cc, hyper]

    def anchor_params(self, i, shared):
        return self._run(lambda r0, r1, c0, c1: self.context.anchor_params(i, [s[..., r0:r1, c0:c1] for s in shared]),
                         shared[-1], 0)

    def nonanchor_params(self, i, shared, anchors_hat):
        def params(r0, r1, c0, c1):
            return self.context.nonanchor_params(i, [s[..., r0:r1, c0:c1] for s in shared],
                                                 anchors_hat[..., r0:r1, c0:c1])

        return self._run(params, anchors_hat, _halo(self.context.local_context[i]))


# -- decoder -------------------------------------------------------------------------------------

def synthesise(model, y_hat: torch.Tensor, lam_t: torch.Tensor):
    """ŷ (1, M, h, w) → (guide c, z_c) at 2h × 2w, in exact tiles."""
    comp = model.compression
    block = tiles(model)["compression"] // 16
    halo = _halo(torch.nn.Sequential(*comp.g_s, comp.out))
    plan = _exact(block, halo)
    return run_tiled(lambda r0, r1, c0, c1: comp.synthesise(y_hat[..., r0:r1, c0:c1], lam_t),
                     y_hat.shape[2], y_hat.shape[3], plan, 2)


def tiled_eps(model, eps_fn, guide: torch.Tensor):
    """Wrap ``eps_fn(x, t, guide)`` into the sampler's ``eps(x, t)``, evaluated in blended tiles of
    the latent (aligned to 8 positions, the UNet's own downsampling)."""
    plan = _blended(tiles(model)["denoiser"], 64)

    def eps(x, t):
        def tile(r0, r1, c0, c1):
            rows, cols = slice(8 * r0, 8 * r1), slice(8 * c0, 8 * c1)
            return eps_fn(x[..., rows, cols], t, guide[..., rows, cols])

        return run_tiled(tile, x.shape[2] // 8, x.shape[3] // 8, plan, 8)

    return eps


def decode_image(model, latent: torch.Tensor, height: int, width: int, to_uint8) -> np.ndarray:
    """Latent (1, C, h, w) → (height, width, 3) uint8 image, decoded in blended tiles and converted band
    by band, so that the full-resolution float image never exists."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    vae_dtype = network_dtype(model.vae)

    def tile(r0, r1, c0, c1):
        return decode_latent(model.vae, latent[..., r0:r1, c0:c1].to(vae_dtype))

    def emit(y0, y1, outs):
        if y0 < height:
            out[y0 : min(y1, height)] = to_uint8(outs[0][:, :, : min(y1, height) - y0, :width])

    run_tiled(tile, latent.shape[2], latent.shape[3], _blended(tiles(model)["decoder"], 8), 8, emit=emit)
    return out


def seams(model, height: int, width: int) -> tuple[list[int], list[int]]:
    """Pixel rows and columns where blended tiles meet (the middle of each overlap), for every blended
    stage: where a seam would show. For measurements (``make bench``, tests)."""
    from .tiling import spans

    ph, pw = -(-height // 64) * 64, -(-width // 64) * 64
    found = ([], [])
    for stage, unit in (("encoder", 16), ("denoiser", 64), ("decoder", 8)):
        plan = _blended(tiles(model)[stage], unit)
        for axis, n in enumerate((ph, pw)):
            extents = spans(n // unit, plan.tile, plan.overlap)
            for (_, stop), (start, _) in zip(extents, extents[1:]):
                found[axis].append((start + stop) * unit // 2)
    rows, cols = (sorted({p for p in f if p < limit}) for f, limit in zip(found, (height, width)))
    return rows, cols
