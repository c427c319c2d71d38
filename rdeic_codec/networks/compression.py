"""The compression module of RDEIC (method file, section 2).

Analysis g_a, hyper analysis h_a, a vector-quantised hyper latent (codebook), hyper synthesis h_s, an
ELIC-style channel context with checkerboard spatial context over 10 slices of y, synthesis g_s and
the ``out`` conv that predicts the latent z_c.

The small profile adds one thing the paper does not have: per-channel gain vectors on y at a few λ
values (:class:`LambdaGains`), so that one model serves every rate in [0.1, 2]. Profiles with
``lambdas: None`` have no gains. Other designs of the module (``type`` in the config) are in
:mod:`.hyperprior`; :func:`build_compression` picks one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResidualBlock, ResidualBlockDown, ResidualBlockUp, conv3x3


def analysis(cfg: dict) -> nn.Sequential:
    """g_a: feature (C_f, H/8) → y (M, H/16). RB(C_f→N), 3×RB, RBS, 3×RB, conv3×3(N→M)."""
    f, n, m = cfg["feature_channels"], cfg["N"], cfg["M"]
    return nn.Sequential(
        ResidualBlock(f, n), ResidualBlock(n, n), ResidualBlock(n, n), ResidualBlock(n, n),
        ResidualBlockDown(n, n),
        ResidualBlock(n, n), ResidualBlock(n, n), ResidualBlock(n, n),
        conv3x3(n, m),
    )


def synthesis(cfg: dict) -> nn.Sequential:
    """g_s: ŷ (M, H/16) → c (C_g, H/8). conv3×3, 3×RB, RBU, 4×RB."""
    n, m, g = cfg["N"], cfg["M"], cfg["guide_channels"]
    return nn.Sequential(
        conv3x3(m, n),
        ResidualBlock(n, n), ResidualBlock(n, n), ResidualBlock(n, n),
        ResidualBlockUp(n, n),
        ResidualBlock(n, n), ResidualBlock(n, n), ResidualBlock(n, n), ResidualBlock(n, g),
    )


def hyper_analysis(cfg: dict) -> nn.Sequential:
    """h_a: y (M, H/16) → z (C_z, H/64). RB, RB, RBS, RBS."""
    m, h = cfg["M"], cfg["hyper_channels"]
    return nn.Sequential(ResidualBlock(m, h), ResidualBlock(h, h), ResidualBlockDown(h, h), ResidualBlockDown(h, h))


def hyper_synthesis(cfg: dict) -> nn.Sequential:
    """h_s: ẑ (C_z, H/64) → hyper (2M, H/16). RBU, RBU, RB(→1.5·C_z), RB(→2M)."""
    m, h = cfg["M"], cfg["hyper_channels"]
    return nn.Sequential(
        ResidualBlockUp(h, h), ResidualBlockUp(h, h), ResidualBlock(h, h * 3 // 2), ResidualBlock(h * 3 // 2, 2 * m)
    )


class ChannelContext(nn.Module):
    """conv5×5(Σprev→h1) → GELU → conv5×5(h1→h2) → GELU → conv5×5(h2→2C_i)."""

    def __init__(self, cin: int, cout: int, hidden: list[int]):
        super().__init__()
        h1, h2 = hidden
        self.fushion = nn.Sequential(  # the authors' spelling, kept so checkpoints map one to one
            nn.Conv2d(cin, h1, 5, padding=2), nn.GELU(),
            nn.Conv2d(h1, h2, 5, padding=2), nn.GELU(),
            nn.Conv2d(h2, cout, 5, padding=2),
        )

    def forward(self, x):
        return self.fushion(x)


class EntropyParameters(nn.Module):
    """EP: 1×1 conv(in→⌊5·2C/3⌋) → GELU → 1×1 conv(→⌊4·2C/3⌋) → GELU → 1×1 conv(→2C).
    Output halves: first the scales, then the means."""

    def __init__(self, cin: int, channels: int):
        super().__init__()
        c2 = 2 * channels
        self.fusion = nn.Sequential(
            nn.Conv2d(cin, 5 * c2 // 3, 1), nn.GELU(),
            nn.Conv2d(5 * c2 // 3, 4 * c2 // 3, 1), nn.GELU(),
            nn.Conv2d(4 * c2 // 3, c2, 1),
        )

    def forward(self, x):
        scales, means = self.fusion(x).chunk(2, dim=1)
        return scales, means


def anchor_mask(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """1 where (row + col) is odd: the anchors, coded first (method file, section 2)."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    return ((rows + cols) % 2 == 1).to(dtype).view(1, 1, height, width)


class EntropyContext(nn.Module):
    """Per-slice parameter networks: channel context, spatial (checkerboard) context and the two EPs."""

    def __init__(self, cfg: dict):
        super().__init__()
        slices, m, hidden = cfg["slices"], cfg["M"], cfg["context_hidden"]
        if sum(slices) != m:
            raise ValueError(f"slices {slices} must add up to M={m}")
        self.slices = list(slices)
        hyper = 2 * m
        self.local_context = nn.ModuleList(nn.Conv2d(c, 2 * c, 5, padding=2) for c in slices)
        # Index 0 has no previous slice; a placeholder keeps the authors' indices 1..9.
        self.channel_context = nn.ModuleList(
            [nn.Identity()] + [ChannelContext(sum(slices[:i]), 2 * c, hidden) for i, c in enumerate(slices) if i > 0]
        )
        self.entropy_parameters_anchor = nn.ModuleList(
            EntropyParameters(hyper + (2 * c if i else 0), c) for i, c in enumerate(slices)
        )
        self.entropy_parameters_nonanchor = nn.ModuleList(
            EntropyParameters(hyper + 2 * c + (2 * c if i else 0), c) for i, c in enumerate(slices)
        )

    def slice_inputs(self, i: int, hyper: torch.Tensor, previous: list[torch.Tensor]) -> list[torch.Tensor]:
        """The context shared by both passes of slice i: [channel ctx (i>0), hyper]."""
        if i == 0:
            return [hyper]
        return [self.channel_context[i](torch.cat(previous, dim=1)), hyper]

    def anchor_params(self, i: int, shared: list[torch.Tensor]):
        return self.entropy_parameters_anchor[i](torch.cat(shared, dim=1))

    def nonanchor_params(self, i: int, shared: list[torch.Tensor], anchors_hat: torch.Tensor):
        spatial = self.local_context[i](anchors_hat)
        return self.entropy_parameters_nonanchor[i](torch.cat([spatial] + shared, dim=1))


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantisation of z (squared L2), with straight-through gradients.

    ``embed_prob`` is the exponential moving average of code usage: it re-seeds dead codes in training
    and, at coding time, is the learned static distribution of the indices (the authors spend a flat
    log2(K) bits per index instead).
    """

    def __init__(self, size: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / size, 1.0 / size)
        self.register_buffer("embed_prob", torch.full((size,), 1.0 / size))
        self.decay = decay

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, h, w) indices of the nearest codewords."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        book = self.embedding.weight.to(flat.dtype)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, indices: torch.Tensor, dtype=None) -> torch.Tensor:
        """(B, h, w) indices → (B, C, h, w) codewords."""
        book = self.embedding.weight if dtype is None else self.embedding.weight.to(dtype)
        return book[indices].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor):
        """Returns (z_q with straight-through gradient, indices, VQ loss)."""
        idx = self.indices(z.detach())
        e = self.lookup(idx)
        loss = 0.25 * F.mse_loss(z, e.detach()) + F.mse_loss(e, z.detach())
        if self.training:
            self._update_usage(idx, z.detach())
        return z + (e - z).detach(), idx, loss

    @torch.no_grad()
    def _update_usage(self, idx: torch.Tensor, z: torch.Tensor) -> None:
        counts = torch.bincount(idx.flatten(), minlength=self.embed_prob.numel()).to(self.embed_prob)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:  # data-parallel training: the usage of the whole batch, the same on every process
            torch.distributed.all_reduce(counts)
        self.embed_prob.mul_(self.decay).add_(counts / counts.sum(), alpha=1 - self.decay)
        # Re-seed codes that are (almost) never used with random batch features.
        dead = self.embed_prob < 0.03 / self.embed_prob.numel()
        n_dead = int(dead.sum())
        if n_dead:
            flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            pick = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)]
            self.embedding.weight.data[dead] = pick + 1e-3 * torch.randn_like(pick)
            self.embed_prob[dead] = 1.0 / self.embed_prob.numel()
            if distributed:  # each process drew its own features; keep rank 0's so the codebooks agree
                torch.distributed.broadcast(self.embedding.weight.data, 0)


class LambdaGains:
    """Per-channel gains on y at a few λ, interpolated in log λ (Cui et al., "Asymmetric Gained Deep
    Image Compression", CVPR 2021): one model for every rate. Shared by every compression design; the
    parameters sit on the module itself (``log_lambdas``, ``log_gain``, ``log_inv_gain``), so that the
    authors' checkpoints keep their key names. A config with ``lambdas: None`` has no gains.

    The class expects ``self.cfg`` and ``self.g_a``, ``self.h_a``, ``self.quantize``, ``self.g_s``,
    ``self.out`` (the parts the coder runs).
    """

    def _init_gains(self, cfg: dict) -> None:
        lambdas = cfg.get("lambdas")
        if lambdas:
            log_l = torch.tensor([math.log(v) for v in lambdas])
            self.register_buffer("log_lambdas", log_l)
            # Start with gains growing with λ (higher λ → finer quantisation → more bits).
            init = 0.5 * log_l[:, None].repeat(1, cfg["M"])
            self.log_gain = nn.Parameter(init.clone())
            self.log_inv_gain = nn.Parameter(-init.clone())
        else:
            self.log_lambdas = None

    @property
    def reads_latent(self) -> bool:
        """Whether g_a reads the autoencoder's latent (config ``input: "latent"``) instead of the encoder
        feature before the latent's last layer (the paper's, and the default)."""
        return self.cfg.get("input", "feature") == "latent"

    # -- rate control -------------------------------------------------------------------------
    @property
    def lambda_range(self) -> tuple[float, float] | None:
        if self.log_lambdas is None:
            return None
        return float(self.log_lambdas[0].exp()), float(self.log_lambdas[-1].exp())

    def gains(self, lam: torch.Tensor, dtype=None, extrapolate: bool = False):
        """Per-channel (gain, inverse gain) for each λ of a (B,) tensor; (1, 1) without gains.

        The log gains are interpolated linearly in log λ between the trained λ values; past the ends
        they stay at the end values, or with ``extrapolate`` continue the end segments (the rate
        calibration's widening).
        """
        if self.log_lambdas is None:
            return None, None
        log_l = self.log_lambdas.to(dtype or self.log_gain.dtype)
        x = torch.log(lam.to(log_l))
        if not extrapolate:
            x = x.clamp(log_l[0], log_l[-1])
        hi = torch.searchsorted(log_l, x.contiguous()).clamp(1, len(log_l) - 1)
        lo = hi - 1
        w = ((x - log_l[lo]) / (log_l[hi] - log_l[lo]))[:, None]
        lg, lig = self.log_gain.to(log_l), self.log_inv_gain.to(log_l)
        gain = torch.exp(lg[lo] * (1 - w) + lg[hi] * w)
        inv = torch.exp(lig[lo] * (1 - w) + lig[hi] * w)
        return gain[:, :, None, None], inv[:, :, None, None]

    # -- the two halves used at coding time ---------------------------------------------------
    def analyse(self, feature: torch.Tensor, lam: torch.Tensor):
        """Encoder side: what g_a reads (the VAE feature, or the latent for ``input: "latent"``), before
        the feature scale → (gained y, hyper-latent symbols)."""
        return self.analyse_at(self.analysis_transform(feature), lam)

    def analysis_transform(self, feature: torch.Tensor) -> torch.Tensor:
        """The half of :meth:`analyse` that does not depend on λ: g_a of the scaled feature."""
        return self.g_a(feature * self.cfg["feature_scale"])

    def analyse_at(self, y: torch.Tensor, lam: torch.Tensor):
        """The λ-dependent half of :meth:`analyse`: gain, h_a and the hyper latent's symbols of g_a's
        output ``y``."""
        gain, _ = self.gains(lam)
        if gain is not None:
            y = y * gain
        return y, self.quantize.indices(self.h_a(y))

    def synthesise(self, y_hat: torch.Tensor, lam: torch.Tensor):
        """Decoder side: gained ŷ → (guide feature c, predicted latent z_c)."""
        _, inv = self.gains(lam)
        if inv is not None:
            y_hat = y_hat * inv.to(y_hat)
        c = self.g_s(y_hat)
        return c, self.out(c)


class CompressionModule(LambdaGains, nn.Module):
    """RDEIC's compression module (the paper's design, ``type`` "rdeic", the default).

    Args:
        cfg: the ``compression`` section of a profile (see :mod:`rdeic_codec.profiles`).
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.g_a = analysis(cfg)
        self.h_a = hyper_analysis(cfg)
        self.quantize = VectorQuantizer(cfg["codebook_size"], cfg["hyper_channels"])
        self.h_s = hyper_synthesis(cfg)
        self.context = EntropyContext(cfg)
        self.g_s = synthesis(cfg)
        self.out = conv3x3(cfg["guide_channels"], cfg.get("latent_channels", 4))
        self._init_gains(cfg)

    # -- training -----------------------------------------------------------------------------
    def forward(self, feature: torch.Tensor, lam: torch.Tensor, scale_bound: float = 0.11):
        """Training pass (method file, section 2).

        The rate is the paper's noise-based likelihood (``rate_proxy`` "noise", the default), or with
        ``rate_proxy`` "hard" the likelihood of the rounded residual, which is what the range coder
        spends, with a straight-through gradient. At 0.02–0.1 bpp most residuals round to 0 with the
        smallest scale; additive noise charges each of them a fraction of a bit the coder never
        spends (0.088 bpp estimated against 0.0098 bpp in the file for the first shipped model), and
        the λ-weighted loss then settles at rates several times too low.

        Args:
            feature: (B, C_f, H/8, W/8) VAE encoder feature (before the feature scale).
            lam: (B,) rate parameters.
            scale_bound: lower bound of the Gaussian scales.

        Returns:
            dict with ``c``, ``z_c``, ``bits`` (per image, y only), ``vq_loss`` and ``indices``.
        """
        # float32 even under a bfloat16 autocast (training/precision.py): the contexts, the rounding and
        # the rates are interleaved here, and bfloat16's 8 bits are too few for them.
        with torch.autocast(feature.device.type, enabled=False):
            return self._forward(feature.float(), lam, scale_bound)

    def _forward(self, feature: torch.Tensor, lam: torch.Tensor, scale_bound: float):
        y = self.g_a(feature * self.cfg["feature_scale"])
        gain, inv = self.gains(lam)
        if gain is not None:
            y = y * gain
        z_q, indices, vq_loss = self.quantize(self.h_a(y))
        hyper = self.h_s(z_q)
        mask = anchor_mask(y.shape[2], y.shape[3], y.device, y.dtype)
        y_slices = y.split(self.context.slices, dim=1)
        hats, bits = [], 0.0
        for i, ys in enumerate(y_slices):
            shared = self.context.slice_inputs(i, hyper, hats)
            s_a, m_a = self.context.anchor_params(i, shared)
            # Straight-through rounding around the mean (the value the decoder will see).
            hat_a = (ste_round(ys - m_a) + m_a) * mask
            s_n, m_n = self.context.nonanchor_params(i, shared, hat_a)
            scales = s_a * mask + s_n * (1 - mask)
            means = m_a * mask + m_n * (1 - mask)
            residual = ste_round(ys - means)
            hats.append(residual + means)
            if self.cfg.get("rate_proxy", "noise") == "noise":
                residual = ys + torch.empty_like(ys).uniform_(-0.5, 0.5) - means
            bits = bits + gaussian_bits(residual, scales.abs().clamp_min(scale_bound)).flatten(1).sum(1)
        y_hat = torch.cat(hats, dim=1)
        if inv is not None:
            y_hat = y_hat * inv
        c = self.g_s(y_hat)
        return {"c": c, "z_c": self.out(c), "bits": bits, "vq_loss": vq_loss, "indices": indices}


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def gaussian_bits(residual: torch.Tensor, scale: torch.Tensor, floor: float = 1e-9) -> torch.Tensor:
    """-log2 P of a unit-width bin of N(0, scale) around ``residual`` (likelihood floored at 1e-9)."""
    upper = torch.special.ndtr((0.5 - residual.abs()) / scale)
    lower = torch.special.ndtr((-0.5 - residual.abs()) / scale)
    return -torch.log2((upper - lower).clamp_min(floor))


def build_compression(cfg: dict) -> nn.Module:
    """The compression module a config's ``type`` names: "rdeic" (the paper's, the default) or
    "hyperprior" (:class:`~rdeic_codec.networks.hyperprior.HyperpriorModule`)."""
    kind = cfg.get("type", "rdeic")
    if kind == "rdeic":
        return CompressionModule(cfg)
    if kind == "hyperprior":
        from .hyperprior import HyperpriorModule

        return HyperpriorModule(cfg)
    raise ValueError(f"unknown compression type {kind!r} (known: rdeic, hyperprior)")
