"""Coding of the hyper latent (VQ indices, or Gaussian symbols per channel) and of y, slice by slice and
checkerboard pass by pass.

One walk (:func:`walk_slices`) serves the encoder and the decoder, so both sides compute the entropy
parameters with the same code in the same order.
"""

from __future__ import annotations

import numpy as np
import torch

from ..networks.compression import anchor_mask
from .tables import ScaleTable, index_frequencies

WORD = np.dtype("<u4")  # constriction's compressed words, stored little-endian


def _constriction():
    import constriction

    return constriction


class GaussianModels:
    """One quantised-Gaussian model per scale-table entry (mean 0: symbols are y − mean, rounded)."""

    def __init__(self, table: ScaleTable):
        c = _constriction()
        r = table.max_symbol
        self.table = table
        self.models = [c.stream.model.QuantizedGaussian(-r, r, 0.0, float(s)) for s in table.scales]


def index_model(embed_prob: torch.Tensor):
    c = _constriction()
    freq = index_frequencies(embed_prob).astype(np.float64)
    return c.stream.model.Categorical(freq / freq.sum(), perfect=False)


def index_bits(embed_prob: torch.Tensor, indices: np.ndarray) -> float:
    freq = index_frequencies(embed_prob).astype(np.float64)
    return float(-np.log2(freq[indices] / freq.sum()).sum())


def symbol_bits(symbols: np.ndarray, table_scales: np.ndarray, idx: np.ndarray, chunk: int = 1 << 18) -> float:
    """The model's own estimate: -log2 of each symbol's Gaussian bin probability (floored at 2^-24),
    symbol k having the scale ``table_scales[idx[k]]``.

    Per-symbol terms are computed ``chunk`` symbols at a time (a pass of a large image has millions:
    the temporaries of the whole pass at once would be several times its size) and summed at once."""
    log_p = torch.empty(len(symbols), dtype=torch.float64)
    for a in range(0, len(symbols), chunk):
        s = torch.from_numpy(table_scales[idx[a : a + chunk]])
        x = torch.from_numpy(np.abs(symbols[a : a + chunk]).astype(np.float64))
        p = torch.special.ndtr((0.5 - x) / s) - torch.special.ndtr((-0.5 - x) / s)
        log_p[a : a + chunk] = torch.log2(p.clamp_min(2.0**-24))
    return float(-log_p.sum())


class LatentStore:
    """ŷ (1, M, h, w) for the whole image, in float32 while every value written is exact in it.

    ŷ = integer symbol + mean snapped to the grid 2^mean_step_log2, so float32 holds it exactly up to
    2^24 grid steps: |ŷ| < 65536 on the small profile's 2^-8 grid, < 256 on the paper profile's
    2^-16. Half of float64's memory (2 bytes per image pixel instead of 4). A value that float32
    would round widens the store to float64 for good (exactly, before the value is written), so ŷ is
    always the exact float64 value; the context networks widen what they read per tile.
    """

    def __init__(self, channels: int, h: int, w: int, over: torch.Tensor | None = None):
        """``over``: a float32 (1, channels, h, w) tensor to write ŷ into instead of a new one (the
        encoder's y: each value of y is read before the ŷ at its place is written, and the context
        networks read only what is written already)."""
        if over is not None:
            assert over.dtype == torch.float32 and over.shape == (1, channels, h, w) and over.is_contiguous()
            self.tensor = over
        else:
            self.tensor = torch.zeros(1, channels, h, w, dtype=torch.float32)

    def write(self, channels: slice, positions: np.ndarray, values: np.ndarray) -> None:
        """Set ``channels`` at ``positions`` ((h, w) bool) to ``values`` (float64, in (channel, row, col)
        order)."""
        if self.tensor.dtype == torch.float32:
            narrow = values.astype(np.float32)
            if np.array_equal(narrow, values):
                values = narrow
            else:
                self.tensor = self.tensor.double()
        plane = self.tensor[0, channels].numpy()
        plane[np.broadcast_to(positions, plane.shape)] = values


def walk_slices(context, hyper, table: ScaleTable, code_pass, over: torch.Tensor | None = None) -> torch.Tensor:
    """Compute every pass's (scale index, snapped mean) and let ``code_pass`` produce its symbols.

    Args:
        context: a :class:`~rdeic_codec.tiled.TiledContext`, or the float64 CPU copy of the compression
            module's :class:`EntropyContext` (computed in one piece).
        hyper: the output of h_s, (1, 2M, h, w) float64: a tensor or
            :class:`~rdeic_codec.tiled.HyperParameters`.
        table: the scale table.
        code_pass: ``code_pass(channels, positions, scale_idx, means) → symbols``: the pass's
            channel range (a ``slice``) and positions ((h, w) bool), then 1-D arrays over those
            places in (channel, row, col) order; the encoder rounds y there and writes, the decoder
            reads (and needs only the last two).
        over: where to build ŷ (see :class:`LatentStore`); default a new tensor.

    Returns:
        ŷ (1, M, h, w), exactly equal on both sides: float32 when that holds every value exactly,
        else float64 (:class:`LatentStore`).
    """
    from ..tiled import TiledContext, as_hyper

    hyper = as_hyper(hyper)
    _, _, h, w = hyper.shape
    if not isinstance(context, TiledContext):
        context = TiledContext(context, max(h, w, 1))  # one block: the networks on the whole image
    is_anchor = anchor_mask(h, w, dtype=torch.float64).bool()[0, 0].numpy()
    passes = ((True, is_anchor), (False, ~is_anchor))  # the two checkerboard passes and their positions
    store = LatentStore(sum(context.slices), h, w, over)
    starts = context.starts
    with torch.no_grad():
        for i in range(len(context.slices)):
            channels = slice(starts[i], starts[i + 1])
            cc = context.channel_context(i, store.tensor)
            for anchor, positions in passes:
                idx, mu = context.pass_parameters(i, anchor, hyper, cc, store.tensor, is_anchor, table)
                symbols = code_pass(channels, positions, idx, mu)
                store.write(channels, positions, symbols + mu)
                del idx, mu, symbols
            del cc
    return store.tensor


class LatentEncoder:
    """Writes VQ indices, then y, into one range-coded stream."""

    def __init__(self, table: ScaleTable, models: GaussianModels):
        self.coder = _constriction().stream.queue.RangeEncoder()
        self.table, self.models = table, models
        self.estimated_bits = 0.0
        self._y = None

    def encode_hyper(self, symbols: np.ndarray, quantize) -> None:
        """The hyper latent, first in the stream: VQ indices (1, h, w) with the codebook's usage prior,
        or a Gaussian hyper latent's symbols (1, C, h, w), channel by channel with the table entry of
        its learned scale (:class:`~rdeic_codec.networks.hyperprior.GaussianHyperLatent`)."""
        if hasattr(quantize, "embed_prob"):
            self.encode_indices(symbols, quantize.embed_prob)
            return
        r = self.table.max_symbol
        if symbols.size and np.abs(symbols).max() > r:
            raise ValueError(f"hyper-latent symbol beyond ±{r}")
        for c, s in enumerate(self.table.scale_index(quantize.scales())):
            flat = np.ascontiguousarray(symbols[0, c].reshape(-1), dtype=np.int32)
            self.coder.encode(flat, self.models.models[int(s)])
            self.estimated_bits += symbol_bits(flat, self.table.scales, np.full(flat.shape, s))

    def encode_indices(self, indices: np.ndarray, embed_prob: torch.Tensor) -> None:
        flat = indices.reshape(-1).astype(np.int32)
        self.coder.encode(flat, index_model(embed_prob))
        self.estimated_bits += index_bits(embed_prob, flat)

    def encode_latent(self, context, hyper, y: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
        """Code y (1, M, h, w) given the hyper parameters (see :func:`walk_slices`); returns ŷ as the
        decoder will see it.

        Args:
            overwrite: y is not needed afterwards: ŷ is built in y's own memory (a float32 CPU
                tensor; one latent-sized tensor less, 2 bytes a pixel).
        """
        y = y.detach().cpu()
        over = None
        if overwrite and y.dtype == torch.float32:
            over = y = y.contiguous()  # a single-tile y comes channels-last from its conv: then a copy
        y_np = y.numpy()[0]  # float32 stays float32: values − mu promotes exactly to float64
        r = self.table.max_symbol

        def code_pass(channels, positions, idx, mu):
            block = y_np[channels]
            values = block[np.broadcast_to(positions, block.shape)]
            d = values - mu  # rounded and clipped in place: one float64 temporary of the pass, not three
            symbols = np.clip(np.rint(d, out=d), -r, r, out=d).astype(np.int32)
            del d
            self._write(symbols, idx)
            self.estimated_bits += symbol_bits(symbols, self.table.scales, idx)
            return symbols

        return walk_slices(context, hyper, self.table, code_pass, over)

    def _write(self, symbols: np.ndarray, idx: np.ndarray) -> None:
        # Group the pass's symbols by scale index: one vectorised call per table entry in use.
        for s in np.unique(idx):
            self.coder.encode(np.ascontiguousarray(symbols[idx == s]), self.models.models[int(s)])

    def finish(self) -> bytes:
        return self.coder.get_compressed().astype(WORD).tobytes()


class LatentDecoder:
    """Reads what :class:`LatentEncoder` wrote, in the same order."""

    def __init__(self, data: bytes, table: ScaleTable, models: GaussianModels):
        if len(data) % 4:
            raise ValueError("payload length is not a whole number of 32-bit words")
        words = np.frombuffer(data, dtype=WORD).astype(np.uint32)
        self.coder = _constriction().stream.queue.RangeDecoder(words)
        self.table, self.models = table, models

    def decode_hyper(self, h: int, w: int, quantize) -> np.ndarray:
        """What :meth:`LatentEncoder.encode_hyper` wrote for an (h, w) grid at 1/64: (1, h, w) VQ
        indices or (1, C, h, w) Gaussian symbols, int64."""
        if hasattr(quantize, "embed_prob"):
            return self.decode_indices(h * w, quantize.embed_prob).reshape(1, h, w)
        scale_idx = self.table.scale_index(quantize.scales())
        out = np.empty((1, len(scale_idx), h, w), dtype=np.int64)
        for c, s in enumerate(scale_idx):
            out[0, c] = np.asarray(self.coder.decode(self.models.models[int(s)], h * w)).reshape(h, w)
        return out

    def decode_indices(self, count: int, embed_prob: torch.Tensor) -> np.ndarray:
        return np.asarray(self.coder.decode(index_model(embed_prob), count), dtype=np.int64)

    def decode_latent(self, context, hyper) -> torch.Tensor:
        def code_pass(channels, positions, idx, mu):
            symbols = np.empty(idx.shape, dtype=np.int32)
            for s in np.unique(idx):
                sel = idx == s
                symbols[sel] = self.coder.decode(self.models.models[int(s)], int(sel.sum()))
            return symbols

        return walk_slices(context, hyper, self.table, code_pass)
