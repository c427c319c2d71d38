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
from .networks.autoencoder import decode_latent, encoder_feature, latent_from_feature
from .tiling import TilePlan, receptive_radius, run_tiled, spans

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
        source = encoder_feature(model.vae, x.to(vae_dtype))
        if comp.reads_latent:  # g_a reads the latent (the encoder's last layer too), not the feature before it
            source = latent_from_feature(model.vae, source)
        return comp.g_a(source.float() * comp.cfg["feature_scale"])  # float16 VAE: see use_half

    ph, pw = padded
    return run_tiled(y_tile, ph // 16, pw // 16, _blended(tiles(model)["encoder"], 16), 1)


def gain_and_indices(model, y: torch.Tensor, lam_t: torch.Tensor, in_place: bool = False):
    """y before the gain → (gained y, hyper-latent symbols at 1/64); h_a in exact tiles.

    ``in_place`` applies the gain to ``y`` itself (the same products), for a caller that does not
    keep the un-gained y: a second full-size copy of y less."""
    comp = model.compression
    gain, _ = comp.gains(lam_t)
    if gain is not None:
        y = y.mul_(gain) if in_place else y * gain
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


class HyperParameters:
    """h_s's output (1, 2M, h, w) float64, read back by window (:meth:`window`).

    Every pass of every slice reads it (20 times for 10 slices), and each pass ends in a barrier: the
    decoder must have decoded a whole pass before the next pass's parameters exist. So it is computed
    once: recomputing h_s per window instead would run it 20 times, several times the work of the
    rest of the entropy path. Held in memory it takes 8 bytes per image pixel (800 MB at 100 MP), so
    an image of more than one entropy block keeps it in an unnamed temporary file (in $TMPDIR),
    written band by band as h_s's tiles finish and read back per window: the process holds one band
    at a time, the page cache the rest. The values read back are the bytes written.
    """

    def __init__(self, tensor: torch.Tensor | None = None, shape=None):
        self._tensor, self._file = tensor, None
        self.shape = tuple(tensor.shape) if tensor is not None else tuple(shape)

    @classmethod
    def spilled(cls, shape) -> "HyperParameters":
        """An empty store of ``shape`` backed by a temporary file (filled by :meth:`write_rows`)."""
        import tempfile

        out = cls(shape=shape)
        out._file = tempfile.TemporaryFile()  # unnamed: the file goes away with the process
        return out

    def write_rows(self, y0: int, y1: int, band: torch.Tensor) -> None:
        """Store rows y0…y1−1 (a (1, C, y1−y0, w) band), row-major with channels last, so that a
        window of one row is one contiguous read."""
        _, c, _, w = self.shape
        rows = band[0].detach().permute(1, 2, 0).contiguous().numpy()
        self._file.seek(y0 * w * c * 8)
        self._file.write(rows.tobytes())

    def window(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Rows r0…r1−1 × columns c0…c1−1 as a (1, C, r1−r0, c1−c0) float64 tensor."""
        if self._tensor is not None:
            return self._tensor[..., r0:r1, c0:c1]
        _, c, _, w = self.shape
        out = np.empty((r1 - r0, c1 - c0, c), dtype=np.float64)
        for k, r in enumerate(range(r0, r1)):
            self._file.seek((r * w + c0) * c * 8)
            if self._file.readinto(memoryview(out[k]).cast("B")) != out[k].nbytes:
                raise RuntimeError("short read from the hyper-parameter file")
        return torch.from_numpy(out).permute(2, 0, 1)[None].contiguous()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "HyperParameters":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def hyper_parameters(model, indices: torch.Tensor) -> HyperParameters:
    """Hyper-latent symbols (VQ indices (1, h, w), or (1, C, h, w)) → h_s output (1, 2M, 4h, 4w) float64, in blocks of the entropy block: in
    memory for an image of one block (computed in one piece), else in a temporary file."""
    path = model.entropy_path()
    z_hat = path["quantize"].lookup(indices, torch.float64)
    h_s = path["h_s"]
    block = entropy_block(model) // 4
    plan = _exact(block, _halo(h_s))
    h, w = z_hat.shape[2:]

    def tile(r0, r1, c0, c1):
        return h_s(z_hat[..., r0:r1, c0:c1])

    if len(spans(h, plan.tile, plan.overlap)) == 1 and len(spans(w, plan.tile, plan.overlap)) == 1:
        return HyperParameters(tile(0, h, 0, w))
    channels = 2 * sum(path["context"].slices)  # h_s's output: 2M channels
    out = HyperParameters.spilled((1, channels, 4 * h, 4 * w))
    run_tiled(tile, h, w, plan, 4, emit=lambda y0, y1, outs: out.write_rows(y0, y1, outs[0]))
    return out


def as_hyper(hyper) -> HyperParameters:
    """A tensor (tests, tools) or :class:`HyperParameters` as the latter."""
    return hyper if isinstance(hyper, HyperParameters) else HyperParameters(hyper)


def entropy_context(model) -> "TiledContext":
    """The model's entropy context networks in its entropy blocks (what both coders walk)."""
    return TiledContext(model.entropy_path()["context"], entropy_block(model))


class TiledContext:
    """The entropy context networks (:class:`~rdeic_codec.networks.compression.EntropyContext`), evaluated
    in blocks for :func:`~rdeic_codec.entropy.latent_coder.walk_slices`: the channel context with a halo
    of its three 5×5 convolutions, the spatial context with its 5×5 one, the 1×1 parameter networks per
    block. A grid within one block is computed in one piece.

    Each network sees, tile by tile, the same inputs as when the whole-image tensors were sliced (ŷ is
    stored in float32 where that is exact and widened per tile; h_s's output comes by window), and the
    tiles are stitched by the same :func:`~rdeic_codec.tiling.run_tiled`: the parameters are bitwise
    those of the whole-image computation. A pass's parameters are reduced to scale indices and snapped
    means band by band, so no full-size scale or mean tensor exists.
    """

    def __init__(self, context, block: int):
        self.context, self.block = context, block
        self.slices = context.slices
        self.starts = np.cumsum([0] + list(context.slices))

    def _plan(self, halo: int) -> TilePlan:
        return _exact(self.block, halo)

    def channel_context(self, i: int, y_hat: torch.Tensor) -> torch.Tensor | None:
        """Slice i's channel context from ŷ of the slices before it (None for slice 0), full size."""
        if i == 0:
            return None
        net, stop = self.context.channel_context[i], self.starts[i]
        h, w = y_hat.shape[-2:]

        def tile(r0, r1, c0, c1):
            return net(y_hat[:, :stop, r0:r1, c0:c1].to(torch.float64).contiguous())

        return run_tiled(tile, h, w, self._plan(_halo(net)), 1)

    def pass_parameters(self, i: int, anchor: bool, hyper: HyperParameters, cc, y_hat: torch.Tensor,
                        is_anchor: np.ndarray, table) -> tuple[np.ndarray, np.ndarray]:
        """One pass's (scale indices, snapped means) at its positions, as 1-D arrays in (channel, row,
        col) order.

        Args:
            i: the slice.
            anchor: the anchor pass (else the non-anchor pass, which sees the slice's decoded anchors).
            hyper: h_s's output.
            cc: slice i's channel context (None for slice 0).
            y_hat: ŷ so far (the non-anchor pass reads slice i's anchors; the rest of the slice is 0).
            is_anchor: (h, w) bool, the anchor positions (:func:`~rdeic_codec.networks.compression.anchor_mask`).
            table: the scale table.
        """
        ctx, ch = self.context, self.slices[i]
        s0, s1 = self.starts[i], self.starts[i + 1]
        h, w = is_anchor.shape
        positions = is_anchor if anchor else ~is_anchor
        anchors = torch.from_numpy(is_anchor).to(torch.float64)[None, None]  # anchor_mask's 0/1 values

        def tile(r0, r1, c0, c1):
            shared = [hyper.window(r0, r1, c0, c1)]
            if cc is not None:
                shared.insert(0, cc[..., r0:r1, c0:c1])
            if anchor:
                return ctx.anchor_params(i, shared)
            anchors_hat = y_hat[:, s0:s1, r0:r1, c0:c1].to(torch.float64) * anchors[..., r0:r1, c0:c1]
            return ctx.nonanchor_params(i, shared, anchors_hat)

        per_row = positions.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(per_row)])
        idx = np.empty((ch, offsets[-1]), dtype=np.int64)
        mu = np.empty((ch, offsets[-1]), dtype=np.float64)

        def emit(y0, y1, outs):  # finished rows y0…y1−1: their positions are one run of each channel's
            scales, means = (o[0].contiguous() for o in outs)  # contiguous, as whole-image tensors were
            sel = positions[y0:y1]
            idx[:, offsets[y0] : offsets[y1]] = table.scale_index(scales)[:, sel]
            mu[:, offsets[y0] : offsets[y1]] = table.snap_mean(means)[:, sel]

        run_tiled(tile, h, w, self._plan(0 if anchor else _halo(ctx.local_context[i])), 1, emit=emit)
        return idx.reshape(-1), mu.reshape(-1)


# -- decoder -------------------------------------------------------------------------------------

def synthesise(model, y_hat: torch.Tensor, lam_t: torch.Tensor):
    """ŷ (1, M, h, w) → (guide c, z_c) at 2h × 2w, in exact tiles."""
    comp = model.compression
    block = tiles(model)["compression"] // 16
    halo = _halo(torch.nn.Sequential(*comp.g_s, comp.out))
    plan = _exact(block, halo)
    return run_tiled(lambda r0, r1, c0, c1: comp.synthesise(y_hat[..., r0:r1, c0:c1], lam_t),
                     y_hat.shape[2], y_hat.shape[3], plan, 2)


def tiled_prediction(model, model_fn, *conditions: torch.Tensor):
    """Wrap ``model_fn(x, t, *conditions)`` into the sampler's ``model_fn(x, t)``, evaluated in blended
    tiles of the latent (aligned to 8 positions, the UNet's own downsampling). ``conditions`` (the guide
    c, z_c) have the latent's height and width and are cut into the same tiles."""
    plan = _blended(tiles(model)["denoiser"], 64)

    def predict(x, t):
        def tile(r0, r1, c0, c1):
            rows, cols = slice(8 * r0, 8 * r1), slice(8 * c0, 8 * c1)
            return model_fn(x[..., rows, cols], t, *(c[..., rows, cols] for c in conditions))

        return run_tiled(tile, x.shape[2] // 8, x.shape[3] // 8, plan, 8)

    return predict


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
