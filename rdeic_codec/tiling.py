"""Run a network over a large image in tiles, so that memory is bounded by the tile, not the image.

A tile grid is laid out per axis in *units* (a position of the coarsest resolution a network needs its
input aligned to, e.g. 16 pixels for an encoder that downsamples by 16). Neighbouring tiles overlap;
every output position gets a weighted sum of the tiles that cover it, with weights that fall to zero
in a ``margin`` next to each tile's interior edges (where the tile lacks context) and rise over a
``ramp`` after it. The weights are normalised per axis, so they sum to one everywhere.

Two uses:

* **exact** (``ramp == 0``, ``margin == halo``): for networks that only see a bounded neighbourhood
  (convolutions without normalisation), with a halo at least their receptive field, each output
  position comes from a tile that sees everything the untiled network would see: the result equals
  the untiled one up to float rounding, and is a fixed function of the input size (the entropy path
  relies on that: encoder and decoder lay out the same tiles).
* **blended** (``ramp > 0``): for networks that see across a tile border (group norm, attention), a
  linear cross-fade over the overlap hides the seam.

An image no larger than one tile is processed in one call, exactly as without tiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TilePlan:
    """Tile length and minimum overlap in grid units; margin and ramp as fractions of the overlap."""

    tile: int
    overlap: int
    margin: float
    ramp: float

    def __post_init__(self):
        if not (self.tile > self.overlap >= 0 and self.margin >= 0 and self.ramp >= 0
                and 2 * self.margin + self.ramp <= 1):
            raise ValueError(f"inconsistent tile plan {self}")

    @classmethod
    def exact(cls, tile: int, halo: int) -> "TilePlan":
        """Tiles whose kept part has ``halo`` units of context on every interior side."""
        return cls(tile, 2 * halo, 0.5, 0.0)

    @classmethod
    def blended(cls, tile: int, overlap: int) -> "TilePlan":
        """Tiles that cross-fade over the middle half of the overlap (a quarter of it is dropped each side)."""
        return cls(tile, overlap, 0.25, 0.5)


def spans(n: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Tile extents [start, stop) along an axis of ``n`` units: one tile if it fits, else the fewest
    tiles of length ``tile`` that overlap by at least ``overlap``, spread evenly (integer arithmetic:
    a function of the sizes alone)."""
    if n <= tile:
        return [(0, n)]
    count = -(-(n - overlap) // (tile - overlap))
    return [(i * (n - tile) // (count - 1), i * (n - tile) // (count - 1) + tile) for i in range(count)]


def axis_weights(n: int, extents: list[tuple[int, int]], plan: TilePlan, unit: int) -> list[np.ndarray]:
    """Per tile, the normalised weights of its output positions (``unit`` outputs per grid unit)."""
    raw = []
    margin, ramp = plan.margin * plan.overlap * unit, plan.ramp * plan.overlap * unit
    for start, stop in extents:
        q = np.arange((stop - start) * unit, dtype=np.float64) + 0.5
        d = np.minimum(q if start > 0 else np.inf, (stop - start) * unit - q if stop < n else np.inf) + 0 * q
        raw.append(np.clip((d - margin) / ramp, 0.0, 1.0) if ramp else (d > margin).astype(np.float64))
    total = np.zeros(n * unit)
    for (start, _), w in zip(extents, raw):
        total[start * unit : start * unit + len(w)] += w
    if not (total > 0).all():
        raise AssertionError(f"tile plan {plan} leaves positions without weight")
    return [w / total[start * unit : start * unit + len(w)] for (start, _), w in zip(extents, raw)]


def run_tiled(fn, rows: int, cols: int, plan: TilePlan, unit: int = 1, emit=None):
    """Evaluate ``fn`` tile by tile and stitch the results.

    Args:
        fn: ``fn(r0, r1, c0, c1)`` → a (B, C, (r1−r0)·unit, (c1−c0)·unit) tensor, or a tuple of them, for
            the tile covering grid rows r0…r1−1 and columns c0…c1−1; it fetches its own inputs.
        rows, cols: the grid size in units.
        plan: the tile layout.
        unit: output positions per grid unit.
        emit: optional ``emit(y0, y1, outputs)`` receiving finished output rows y0…y1−1 in order (with
            every column), so a caller can convert them and not hold the whole output; without it
            the stitched output is returned.

    Returns:
        what ``fn`` returns, at full size (None with ``emit``). With a single tile, ``fn``'s own result.
    """
    row_spans, col_spans = spans(rows, plan.tile, plan.overlap), spans(cols, plan.tile, plan.overlap)
    if len(row_spans) == 1 and len(col_spans) == 1:
        out = fn(0, rows, 0, cols)
        if emit is None:
            return out
        emit(0, rows * unit, _as_tuple(out))
        return None
    wy = axis_weights(rows, row_spans, plan, unit)
    wx = axis_weights(cols, col_spans, plan, unit)
    full, single = None, None

    def keep(y0, y1, outs):  # the default sink: one full-size tensor per output
        nonlocal full
        if full is None:
            full = [torch.empty(o.shape[0], o.shape[1], rows * unit, cols * unit, dtype=o.dtype, device=o.device)
                    for o in outs]
        for f, o in zip(full, outs):
            f[:, :, y0:y1] = o

    sink = emit or keep
    band_start, carry = 0, None
    for j, (r0, r1) in enumerate(row_spans):
        top, bottom = r0 * unit - band_start, r1 * unit - band_start
        acc = None
        for k, (c0, c1) in enumerate(col_spans):
            out = fn(r0, r1, c0, c1)
            single = not isinstance(out, (tuple, list))
            outs = _as_tuple(out)
            if acc is None:
                acc = [torch.zeros(o.shape[0], o.shape[1], bottom, cols * unit, dtype=o.dtype, device=o.device)
                       for o in outs]
                for a, c in zip(acc, carry or ()):
                    a[:, :, : c.shape[2]] += c
            w = torch.from_numpy(np.outer(wy[j], wx[k]))
            for a, o in zip(acc, outs):
                a[:, :, top:bottom, c0 * unit : c1 * unit] += o * w.to(o.device, o.dtype)
            del out, outs
        final = (row_spans[j + 1][0] if j + 1 < len(row_spans) else rows) * unit
        sink(band_start, final, [a[:, :, : final - band_start] for a in acc])
        carry = [a[:, :, final - band_start :].clone() for a in acc]
        band_start = final
        del acc
    if emit is not None:
        return None
    return full[0] if single else tuple(full)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def receptive_radius(module: nn.Module) -> float:
    """How many input positions, on each side, can reach one output position of a stack of the
    compression module's blocks (convolutions, residual blocks, ×2 down/up blocks): the halo an exact
    tiling needs. Shortcuts are 1×1 and reach no further than the main path."""
    from .networks.blocks import PlainResidualBlock, ResidualBlock, ResidualBlockDown, ResidualBlockUp

    radius, scale = 0.0, 1.0  # scale: input positions per position at the current depth
    for m in _layers(module):
        if isinstance(m, nn.Conv2d):
            radius += (m.kernel_size[0] - 1) // 2 * m.dilation[0] * scale
            scale *= m.stride[0]
        elif isinstance(m, (ResidualBlock, PlainResidualBlock)):
            radius += 2 * scale
        elif isinstance(m, ResidualBlockDown):
            radius += scale + 2 * scale  # 3×3 stride 2, then a 3×3 at half resolution
            scale *= 2
        elif isinstance(m, ResidualBlockUp):
            scale /= 2
            radius += scale  # one 3×3 after the pixel shuffle
        elif hasattr(m, "fushion"):  # the channel context: a plain stack of 5×5 convolutions
            radius += receptive_radius(m.fushion) * scale
        elif sum(p.numel() for p in m.parameters()) == 0:  # activations, pixel shuffle on its own
            if isinstance(m, nn.PixelShuffle):
                scale /= m.upscale_factor
        else:
            raise TypeError(f"no receptive field rule for {type(m).__name__}")
    return radius


def _layers(module: nn.Module):
    """The layers of nested ``nn.Sequential`` stacks in order (so that a resampling inside one, such as
    a conv + pixel shuffle pair, changes the scale of the layers after it)."""
    if isinstance(module, nn.Sequential):
        for m in module:
            yield from _layers(m)
    else:
        yield module
