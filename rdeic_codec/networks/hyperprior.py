"""A plain mean-scale hyperprior compression module (``type`` "hyperprior"; the small-hyperprior profile's).

Minnen, Ballé and Toderici, "Joint Autoregressive and Hierarchical Priors for Learned Image
Compression" (NeurIPS 2018), without the autoregressive context: y is coded with a Gaussian whose mean
and scale come from h_s(ẑ), and the hyper latent z is rounded and coded with a zero-mean Gaussian per
channel. It stands in for the paper's compression module (VQ hyper latent, channel and checkerboard
contexts, :mod:`.compression`) because a design like it learned far faster on a CPU in issue 21's
probe (+1.8 dB and +0.064 MS-SSIM on whole photos at 0.12 bpp after 30 CPU-minutes, against about
4 CPU-hours of the paper design's training); this project's first variable-rate run of it did not
(docs/training.md, session 9).

It keeps the parts and the interface the coder runs: ``g_a``, ``h_a``, ``quantize`` (here
:class:`GaussianHyperLatent`), ``h_s``, ``context`` (here :class:`HyperContext`, one slice whose two
checkerboard passes share the same parameters), ``g_s`` and ``out``, and the λ gains of
:class:`~.compression.LambdaGains`, so the range coder, tiling and the float64 entropy path are the
same code for both designs. With ``context`` "checkerboard" (:class:`CheckerboardHyperContext`) the
second checkerboard pass also sees the decoded anchors (He et al., CVPR 2021); with "space-channel"
(:class:`SpaceChannelHyperContext`) y is coded in channel slices, each seeing the slices before it too
(ELIC, He et al., CVPR 2022).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import PlainResidualBlock, ResidualBlock, ResidualBlockDown, ResidualBlockUp, conv3x3, plain_upsample
from .compression import LambdaGains, anchor_mask, gaussian_bits, ste_round

# The largest |symbol| of z (the entropy section's max_symbol): the coder's Gaussian models stop there.
MAX_SYMBOL = 4096


class GaussianHyperLatent(nn.Module):
    """The hyper latent z: rounded, and coded with a zero-mean Gaussian of a learned scale per channel.

    It stands where :class:`~.compression.VectorQuantizer` stands in the paper's design: ``indices``
    gives the symbols the coder writes, ``lookup`` turns decoded symbols back into ẑ.
    """

    # Training: the log scales' learning rate is this many times the module's. At the module's 3e-4 Adam
    # moves each by at most about 3e-4 a step: after 300 steps the scales were still 0.92 (from 1), and a
    # zero symbol of z at σ ≈ 1 costs 1.3 bits, 0.02 bpp for 64 channels at 1/64 — most of the lowest
    # rate's budget (docs/training.md, session 9).
    LR_SCALE = 30.0

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def scales(self) -> torch.Tensor:
        """The per-channel Gaussian scales (before the scale table's bound)."""
        return self.log_scale.exp()

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → rounded symbols (int64), clipped to what the coder's models hold."""
        return torch.round(z).clamp(-MAX_SYMBOL, MAX_SYMBOL).to(torch.int64)

    def lookup(self, symbols: torch.Tensor, dtype=None) -> torch.Tensor:
        return symbols.to(dtype or self.log_scale.dtype)

    def forward(self, z: torch.Tensor, scale_bound: float = 0.11):
        """Returns (ẑ with a straight-through gradient, bits per image): the likelihood of the rounded
        value, which is what the range coder spends."""
        z_hat = ste_round(z)
        scale = self.scales().clamp_min(scale_bound)[None, :, None, None]
        return z_hat, gaussian_bits(z_hat, scale).flatten(1).sum(1)


class HyperContext(nn.Module):
    """The entropy parameters of a plain hyperprior: h_s's output split into (scales, means).

    It has the coder's side of :class:`~.compression.EntropyContext`'s interface with one slice (so no
    channel context) and no learned context, so :func:`~rdeic_codec.entropy.latent_coder.walk_slices`
    codes y with it unchanged (its anchor and non-anchor passes get the same parameters).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.slices = [channels]
        self.starts = [0, channels]  # each slice's first channel, and M
        self.local_context = nn.ModuleList([nn.Identity()])  # no spatial context: nothing to reach

    def corrections(self) -> list[nn.Sequential]:
        """A learned context's correction networks (their last layers start at zero); none here."""
        return []

    def _load_as_none(self, module, state_dict, prefix, *args) -> None:
        """Weights without this context's own (a plain module's, or one with another context) load as a
        context that changes nothing: the other context's keys are dropped, the corrections' last layers
        are zeroed and the current weights stand in. This is how ``rdeic train --from`` puts a new
        context on a finished module. A learned context registers it as a load pre-hook."""
        if prefix + self.OWN_KEY in state_dict:
            return
        for k in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[k]
        with torch.no_grad():
            for net in self.corrections():
                net[-1].weight.zero_()
                net[-1].bias.zero_()
        state_dict.update({prefix + k: v.clone() for k, v in self.state_dict().items()})

    def anchor_params(self, i: int, shared: list[torch.Tensor]):
        return shared[-1].chunk(2, dim=1)

    def nonanchor_params(self, i: int, shared: list[torch.Tensor], anchors_hat: torch.Tensor):
        return shared[-1].chunk(2, dim=1)


class CheckerboardHyperContext(HyperContext):
    """A checkerboard context on top of the hyperprior (He, Zheng, Sun, Wang and Qin, "Checkerboard
    Context Model for Efficient Learned Image Compression", CVPR 2021): y is coded in two passes, the
    anchors ((row + col) odd) with h_s's parameters alone, then the other half with h_s's parameters plus
    a correction computed from the decoded anchors around each position (a 5×5 convolution) and h_s's
    output, through 1×1 convolutions. Both passes are ones the coder already runs (the paper design's);
    the correction's last layer starts at zero, so a new context codes exactly as :class:`HyperContext`.

    Args:
        channels: M, y's channels.
        hidden: the width of the 1×1 layers.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__(channels)
        self.local_context = nn.ModuleList([nn.Conv2d(channels, 2 * channels, 5, padding=2)])
        self.correction = nn.Sequential(
            nn.Conv2d(4 * channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, hidden, 1), nn.GELU(),
            nn.Conv2d(hidden, 2 * channels, 1),
        )
        nn.init.zeros_(self.correction[-1].weight)
        nn.init.zeros_(self.correction[-1].bias)
        self.register_load_state_dict_pre_hook(self._load_as_none)

    OWN_KEY = "correction.0.weight"  # present in this context's weights only

    def corrections(self) -> list[nn.Sequential]:
        return [self.correction]

    def nonanchor_params(self, i: int, shared: list[torch.Tensor], anchors_hat: torch.Tensor):
        hyper = shared[-1]
        spatial = self.local_context[i](anchors_hat.to(hyper.dtype))
        return (hyper + self.correction(torch.cat([spatial, hyper], dim=1))).chunk(2, dim=1)


class SpaceChannelHyperContext(HyperContext):
    """A space-channel context on top of the hyperprior (He, Yang, Peng, Ma, Qin and Wang, "ELIC: Efficient
    Learned Image Compression with Unevenly Grouped Space-Channel Contextual Adaptive Coding", CVPR 2022):
    y's channels are coded in slices, each in the two checkerboard passes. Slice i's parameters are h_s's
    for its channels plus a correction computed from ŷ of the slices before it (the channel context: a
    3×3 convolution, then 1×1) and, in the non-anchor pass, from the slice's decoded anchors (a 5×5
    convolution), through 1×1 layers. These are the passes the coder runs for the paper design's
    :class:`~.compression.EntropyContext`. Every correction's last layer starts at zero, so a new context
    codes exactly as :class:`HyperContext`.

    Cost: the networks see only their slice's channels and h_s's parameters for them (2c), so with the
    small profile's slices and width they do fewer multiply-adds than :class:`CheckerboardHyperContext`,
    which mixes all of y's channels.

    Args:
        channels: M, y's channels.
        slices: the channels of each slice, in coding order (adding up to M).
        hidden: the width of every slice's 1×1 layers (``context_hidden``): the same for every slice,
            so that the first slices, which carry most of the bits, are not the narrowest.
        channel_hidden: the width of the channel context's 3×3 layer.
    """

    def __init__(self, channels: int, slices: list[int], hidden: int, channel_hidden: int):
        super().__init__(channels)
        if sum(slices) != channels:
            raise ValueError(f"context_slices {slices} must add up to M={channels}")
        self.slices = list(slices)
        self.starts = [sum(slices[:i]) for i in range(len(slices) + 1)]
        self.local_context = nn.ModuleList(nn.Conv2d(c, 2 * c, 5, padding=2) for c in slices)
        # Index 0 has no slice before it (the coder's TiledContext never calls it).
        self.channel_context = nn.ModuleList(
            [nn.Identity()] + [nn.Sequential(nn.Conv2d(self.starts[i], channel_hidden, 3, padding=1), nn.GELU(),
                                             nn.Conv2d(channel_hidden, 2 * c, 1))
                               for i, c in enumerate(slices) if i > 0])

        def correction(cin: int, c: int) -> nn.Sequential:
            net = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.GELU(), nn.Conv2d(hidden, hidden, 1), nn.GELU(),
                                nn.Conv2d(hidden, 2 * c, 1))
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
            return net

        # Inputs: h_s's parameters of the slice (2c), the channel context (2c, slices after the first),
        # the spatial context (2c, non-anchor pass). Slice 0's anchors have h_s's parameters alone.
        self.anchor_correction = nn.ModuleList(
            [nn.Identity()] + [correction(4 * c, c) for i, c in enumerate(slices) if i > 0])
        self.nonanchor_correction = nn.ModuleList(
            correction((4 if i == 0 else 6) * c, c) for i, c in enumerate(slices))
        self.register_load_state_dict_pre_hook(self._load_as_none)

    OWN_KEY = "nonanchor_correction.0.0.weight"  # present in this context's weights only

    def corrections(self) -> list[nn.Sequential]:
        return list(self.anchor_correction)[1:] + list(self.nonanchor_correction)

    def _hyper(self, i: int, hyper: torch.Tensor) -> torch.Tensor:
        """h_s's (scales, means) of slice i's channels, (B, 2c, h, w)."""
        m, s0, s1 = self.starts[-1], self.starts[i], self.starts[i + 1]
        return torch.cat([hyper[:, s0:s1], hyper[:, m + s0 : m + s1]], dim=1)

    def anchor_params(self, i: int, shared: list[torch.Tensor]):
        base = self._hyper(i, shared[-1])
        if i == 0:
            return base.chunk(2, dim=1)
        return (base + self.anchor_correction[i](torch.cat([base, shared[0]], dim=1))).chunk(2, dim=1)

    def nonanchor_params(self, i: int, shared: list[torch.Tensor], anchors_hat: torch.Tensor):
        base = self._hyper(i, shared[-1])
        spatial = self.local_context[i](anchors_hat.to(base.dtype))
        inputs = [base, spatial] + ([shared[0]] if i else [])
        return (base + self.nonanchor_correction[i](torch.cat(inputs, dim=1))).chunk(2, dim=1)


def build_context(cfg: dict) -> HyperContext:
    """The entropy context a hyperprior config names (``context``: "none", "checkerboard" or "space-channel")."""
    m, kind = cfg["M"], cfg.get("context", "none")
    if kind == "checkerboard":
        return CheckerboardHyperContext(m, cfg.get("context_hidden", 4 * m))
    if kind == "space-channel":
        return SpaceChannelHyperContext(m, cfg["context_slices"], cfg.get("context_hidden", 2 * m),
                                        cfg.get("context_channel_hidden", 64))
    if kind != "none":
        raise ValueError(f"unknown hyperprior context {kind!r} (none, checkerboard, space-channel)")
    return HyperContext(m)


class HyperpriorModule(LambdaGains, nn.Module):
    """Mean-scale hyperprior on the autoencoder's latent (or encoder feature), with λ gains.

    Args:
        cfg: the ``compression`` section of a profile with ``type`` "hyperprior": ``input`` ("latent":
            g_a reads the autoencoder's latent; "feature", the default: its encoder feature before the
            last layer), ``feature_channels`` (the channels of that input, at 1/8), ``N`` (g_a/g_s width), ``M`` (y's channels, at
            1/16), ``hyper_channels`` (h_a/h_s width and z's channels, at 1/64), ``guide_channels``
            (c, the control module's input), ``latent_channels`` (z_c), ``lambdas``, ``blocks``
            ("activated", the default: the paper module's residual blocks, ending in a LeakyReLU;
            "plain": :class:`~.blocks.PlainResidualBlock` and plain resampling, which learned better),
            ``context`` ("none", the default; "checkerboard": :class:`CheckerboardHyperContext`, of
            width ``context_hidden``; "space-channel": :class:`SpaceChannelHyperContext` with
            ``context_slices``, ``context_hidden`` and ``context_channel_hidden``).
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        f, n, m, h, g = cfg["feature_channels"], cfg["N"], cfg["M"], cfg["hyper_channels"], cfg["guide_channels"]
        act = nn.LeakyReLU(0.1)
        plain = cfg.get("blocks", "activated") == "plain"
        # g_a: two residual blocks at 1/8, one ×2 down, two at 1/16 (feature → y).
        if plain:
            self.g_a = nn.Sequential(
                conv3x3(f, n), PlainResidualBlock(n), PlainResidualBlock(n),
                conv3x3(n, n, stride=2), PlainResidualBlock(n), PlainResidualBlock(n),
                conv3x3(n, m),
            )
        else:
            self.g_a = nn.Sequential(
                conv3x3(f, n), ResidualBlock(n, n), ResidualBlock(n, n),
                ResidualBlockDown(n, n), ResidualBlock(n, n), ResidualBlock(n, n),
                conv3x3(n, m),
            )
        # h_a: y → z at 1/64 (two stride-2 convolutions).
        self.h_a = nn.Sequential(
            conv3x3(m, h), act, conv3x3(h, h, stride=2), act, conv3x3(h, h, stride=2),
        )
        self.quantize = GaussianHyperLatent(h)
        # h_s: ẑ → (scales, means) of y at 1/16 (pixel-shuffle up-blocks).
        self.h_s = nn.Sequential(
            conv3x3(h, h), act, ResidualBlockUp(h, h), ResidualBlockUp(h, h * 3 // 2), conv3x3(h * 3 // 2, 2 * m),
        )
        self.context = build_context(cfg)
        # g_s: the mirror of g_a (ŷ → c at 1/8), then ``out`` predicts the latent z_c.
        if plain:
            self.g_s = nn.Sequential(
                conv3x3(m, n), PlainResidualBlock(n), PlainResidualBlock(n),
                plain_upsample(n, n), PlainResidualBlock(n), PlainResidualBlock(n),
                conv3x3(n, g), nn.LeakyReLU(0.1),
            )
        else:
            self.g_s = nn.Sequential(
                conv3x3(m, n), ResidualBlock(n, n), ResidualBlock(n, n),
                ResidualBlockUp(n, n), ResidualBlock(n, n), ResidualBlock(n, g),
            )
        self.out = conv3x3(g, cfg.get("latent_channels", 4))
        self._init_gains(cfg)

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups: the hyper latent's scales at a higher learning rate."""
        scales = [self.quantize.log_scale]
        rest = [p for p in self.parameters() if p is not self.quantize.log_scale]
        return [{"params": rest}, {"params": scales, "lr_scale": GaussianHyperLatent.LR_SCALE}]

    def y_parameters(self, y: torch.Tensor, hyper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (scales, means) y is coded with, at every position, as the coder's passes get them: h_s's
        output ``hyper`` alone, or with a context, slice by slice the anchor pass's parameters at the
        anchors and the non-anchor pass's elsewhere, from the anchors (and earlier slices) rounded as
        coding rounds them (straight through)."""
        ctx = self.context
        if type(ctx) is HyperContext:
            return ctx.anchor_params(0, [hyper])
        mask = anchor_mask(y.shape[2], y.shape[3], y.device, y.dtype)
        scales, means, decoded = [], [], []
        for i in range(len(ctx.slices)):
            y_i = y[:, ctx.starts[i] : ctx.starts[i + 1]]
            shared = [hyper] if i == 0 else [ctx.channel_context[i](torch.cat(decoded, dim=1)), hyper]
            s_a, m_a = ctx.anchor_params(i, shared)
            anchors_hat = (ste_round(y_i - m_a) + m_a) * mask
            s_n, m_n = ctx.nonanchor_params(i, shared, anchors_hat)
            s_i, m_i = s_a * mask + s_n * (1 - mask), m_a * mask + m_n * (1 - mask)
            scales.append(s_i)
            means.append(m_i)
            if i + 1 < len(ctx.slices):
                decoded.append(ste_round(y_i - m_i) + m_i)  # ŷ of the slice, as the decoder has it
        return torch.cat(scales, dim=1), torch.cat(means, dim=1)

    @torch.no_grad()
    def reorder_y(self, order: torch.Tensor) -> None:
        """Put y's channels in ``order`` (y_new[k] = y_old[order[k]]): every layer that writes or reads y
        (g_a's last, h_a's first, h_s's last for both its halves, g_s's first, the λ gains) is permuted
        alike, so the module computes the same z_c and rates, only y's channels come in another order.
        A space-channel context codes slices in channel order; it is permuted before it learns, so its
        own weights are not (call it on a module whose context is new)."""
        m = self.cfg["M"]
        order = torch.as_tensor(order, dtype=torch.long)
        if sorted(order.tolist()) != list(range(m)):
            raise ValueError(f"not an order of y's {m} channels")
        both = torch.cat([order, order + m])
        for conv, index, dim in ((self.g_a[-1], order, 0), (self.h_a[0], order, 1), (self.h_s[-1], both, 0),
                                 (self.g_s[0], order, 1)):
            conv.weight.copy_(conv.weight.index_select(dim, index))
            if dim == 0:
                conv.bias.copy_(conv.bias[index])
        if self.log_lambdas is not None:
            self.log_gain.copy_(self.log_gain[:, order])
            self.log_inv_gain.copy_(self.log_inv_gain[:, order])

    def hyper_analysis(self, feature: torch.Tensor, lam: torch.Tensor, scale_bound: float = 0.11):
        """The first half of :meth:`forward`: (y with its λ gain, the inverse gain (None without gains), ẑ
        with a straight-through gradient, ẑ's bits per image, h_s(ẑ)). y and h_s(ẑ) are float32 even
        under a bfloat16 autocast (training/precision.py): bfloat16 keeps 8 bits, too few for y − μ and
        for the likelihoods."""
        y = self.g_a(feature * self.cfg["feature_scale"]).float()
        gain, inv = self.gains(lam)
        if gain is not None:
            y = y * gain
        z_hat, z_bits = self.quantize(self.h_a(y).float(), scale_bound)
        return y, inv, z_hat, z_bits, self.h_s(z_hat).float()

    def forward(self, feature: torch.Tensor, lam: torch.Tensor, scale_bound: float = 0.11):
        """Training pass. y is rounded around its mean with a straight-through gradient (the value the
        decoder sees), and its rate is the Gaussian likelihood of the rounded residual, which is what
        the range coder spends; z's rate is added the same way.

        Args:
            feature: (B, C_f, H/8, W/8) what g_a reads (``input``: the latent or the encoder feature),
                before the feature scale.
            lam: (B,) rate parameters.
            scale_bound: lower bound of the Gaussian scales (the scale table's smallest entry).

        Returns:
            dict with ``c``, ``z_c``, ``bits`` (per image, y and z), ``vq_loss`` (0: no codebook) and
            ``indices`` (ẑ).
        """
        y, inv, z_hat, z_bits, hyper = self.hyper_analysis(feature, lam, scale_bound)
        scales, means = self.y_parameters(y, hyper)
        residual = ste_round(y - means)
        bits = gaussian_bits(residual, scales.abs().clamp_min(scale_bound)).flatten(1).sum(1) + z_bits
        y_hat = residual + means
        if inv is not None:
            y_hat = y_hat * inv
        c = self.g_s(y_hat)
        return {"c": c, "z_c": self.out(c), "bits": bits, "vq_loss": y.new_zeros(()), "indices": z_hat}
