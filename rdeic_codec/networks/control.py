"""The control module of RDEIC and the UNet walk that injects it (method file, section 3).

The control module is a copy of the UNet's encoder and middle block at reduced width that reads
concat[x_t, c]. Its 25 (for SD) zero-initialised 1×1 convs are **added to the hidden state** of the
frozen UNet: after each encoder unit (conv_in, each resnet/attention pair, each downsampler), to the
middle output, and before each decoder unit. diffusers' ControlNet interface only adds to the skip
connections, so :func:`unet_forward` walks the UNet's blocks itself.

What the controlled UNet predicts is the control section's ``prediction``:

- ``"epsilon"`` (the paper's, the default): the noise ε̂, as the base denoiser does.
- ``"anchored"`` (our addition, issue 22): the latent itself, anchored on z_c,

      x̂0 = r_t·z_c + (1 − r_t)·x̂0_ε + head(h),   r_t = σ_t/σ_N,  σ_t = √(1/ᾱ_t − 1),

  where x̂0_ε is the controlled UNet's own prediction from its ε̂, h its last hidden state, ``head`` a
  zero-initialised 3×3 conv of the control module, and N the relay start. r_t is z_c's share in the
  mean of stage 1's x_t/√ᾱ_t (method file, section 6: ε' = ε + (z_c − z)/λ_r), 1 at the relay start and
  about 0.1 at t = 0. So before any training the first step predicts z_c exactly, where the ε
  prediction starts from the bare denoiser's guess, further from the true latent than z_c
  (docs/training.md, session 10), and the last steps keep the denoiser's x̂0, which is good at small t.
  Training the head and the control module adds only what improves on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..sampler import alphas_cumprod


def _blocks():
    from .diffusers_import import import_module

    embeddings = import_module("diffusers.models.embeddings")
    blocks = import_module("diffusers.models.unets.unet_2d_blocks")
    return embeddings.TimestepEmbedding, embeddings.Timesteps, blocks.get_down_block, blocks.get_mid_block


def build_unet(unet_config: dict):
    from .diffusers_import import import_module

    return import_module("diffusers.models.unets.unet_2d_condition").UNet2DConditionModel(**unet_config)


def encoder_unit_channels(block_out_channels, layers_per_block: int, down_types) -> list[int]:
    """Channels of the hidden state after each encoder unit (conv_in, resnets, downsamplers)."""
    chans = [block_out_channels[0]]
    for level, ch in enumerate(block_out_channels):
        chans += [ch] * layers_per_block
        if level < len(block_out_channels) - 1:
            chans.append(ch)
    return chans


def decoder_unit_channels(unet) -> list[int]:
    """Channels of the UNet hidden state entering each decoder unit (before the skip is concatenated)."""
    chans, current = [], unet.mid_block.resnets[-1].out_channels
    for block in unet.up_blocks:
        for resnet in block.resnets:
            chans.append(current)
            current = resnet.out_channels
    return chans


PREDICTIONS = ("epsilon", "anchored")


def _zero_conv(cin: int, cout: int, kernel: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


@dataclass
class ControlResiduals:
    """What the control module adds to the UNet: one tensor per encoder unit, the middle, per decoder unit."""

    encoder: list[torch.Tensor]
    middle: torch.Tensor
    decoder: list[torch.Tensor]


class ControlModule(nn.Module):
    """Encoder + middle block of a UNet at reduced width, reading concat[x_t, c].

    Args:
        cfg: the ``control`` section of a profile.
        unet_cfg: the ``unet`` section (block types, layers, cross-attention width).
        guide_channels: channels of the guide feature c.
        unet: the UNet it feeds, to size the zero convs.
    """

    def __init__(self, cfg: dict, unet_cfg: dict, guide_channels: int, unet):
        super().__init__()
        TimestepEmbedding, Timesteps, get_down_block, get_mid_block = _blocks()
        chans = cfg["block_out_channels"]
        layers = unet_cfg["layers_per_block"]
        temb = cfg["time_embed_channels"]
        groups = cfg["norm_num_groups"]
        head_dim = cfg["attention_head_dim"]
        cross = unet_cfg["cross_attention_dim"]
        linear = unet_cfg.get("use_linear_projection", False)
        self.time_proj = Timesteps(cfg["time_proj_channels"], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(cfg["time_proj_channels"], temb)
        self.conv_in = nn.Conv2d(unet_cfg["in_channels"] + guide_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        prev = chans[0]
        for level, (kind, ch) in enumerate(zip(unet_cfg["down_block_types"], chans)):
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers, in_channels=prev, out_channels=ch, temb_channels=temb,
                add_downsample=level < len(chans) - 1, resnet_eps=1e-5, resnet_act_fn="silu",
                resnet_groups=groups, cross_attention_dim=cross, num_attention_heads=ch // head_dim,
                attention_head_dim=head_dim, downsample_padding=1, use_linear_projection=linear,
            ))
            prev = ch
        self.mid_block = get_mid_block(
            unet_cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn"), temb_channels=temb, in_channels=chans[-1],
            resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=groups, cross_attention_dim=cross,
            num_attention_heads=chans[-1] // head_dim, attention_head_dim=head_dim, use_linear_projection=linear,
        )
        own = encoder_unit_channels(chans, layers, unet_cfg["down_block_types"])
        target = encoder_unit_channels(unet_cfg["block_out_channels"], layers, unet_cfg["down_block_types"])
        dec_target = decoder_unit_channels(unet)
        n = len(own)
        self.enc_zero_convs = nn.ModuleList(_zero_conv(a, b) for a, b in zip(own, target))
        self.middle_zero_conv = _zero_conv(chans[-1], unet_cfg["block_out_channels"][-1])
        self.dec_zero_convs = nn.ModuleList(_zero_conv(own[n - 1 - j], dec_target[j]) for j in range(n))
        # Per-injection multipliers (the authors' ``scale_list``), all 1 unless a checkpoint says otherwise.
        self.register_buffer("scales", torch.ones(2 * n + 1))
        self.prediction = cfg.get("prediction", "epsilon")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown control prediction {self.prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if self.prediction == "anchored":
            self.anchor_head = _zero_conv(unet_cfg["block_out_channels"][0], unet_cfg["out_channels"], kernel=3)

    @property
    def prediction_type(self) -> str:
        """What the sampler receives (diffusers' names): ``"epsilon"`` or ``"sample"`` (the latent x̂0)."""
        return "sample" if self.prediction == "anchored" else "epsilon"

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, guide: torch.Tensor, context: torch.Tensor) -> ControlResiduals:
        b = x_t.shape[0]
        context = context.expand(b, -1, -1)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(b)
        temb = self.time_embedding(self.time_proj(t).to(x_t.dtype))
        h = self.conv_in(torch.cat([x_t, guide], dim=1))
        feats = [h]
        h = _walk_down(self.down_blocks, h, temb, context, lambda u: feats.append(u) or u)
        h = _mid(self.mid_block, h, temb, context)
        n, s = len(feats), self.scales
        return ControlResiduals(
            encoder=[zc(f) * s[i] for i, (zc, f) in enumerate(zip(self.enc_zero_convs, feats))],
            middle=self.middle_zero_conv(h) * s[n],
            decoder=[zc(feats[n - 1 - j]) * s[n + 1 + j] for j, zc in enumerate(self.dec_zero_convs)],
        )


def _walk_down(blocks, h, temb, context, after_unit):
    """Run a UNet encoder unit by unit (each resnet/attention pair, each downsampler), passing every
    unit's output through ``after_unit``, which may record or modify it."""
    for block in blocks:
        for r, resnet in enumerate(block.resnets):
            h = resnet(h, temb)
            if getattr(block, "has_cross_attention", False):
                h = block.attentions[r](h, encoder_hidden_states=context, return_dict=False)[0]
            h = after_unit(h)
        if block.downsamplers is not None:
            h = after_unit(block.downsamplers[0](h))
    return h


def _mid(block, h, temb, context):
    if getattr(block, "has_cross_attention", False):
        return block(h, temb, encoder_hidden_states=context)
    return block(h, temb)


def unet_forward(unet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 control: ControlResiduals | None = None, hidden: bool = False) -> torch.Tensor:
    """The UNet's epsilon prediction, with the control residuals added to its hidden state.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        x: (B, 4, h, w) noisy latent.
        t: scalar or (B,) timesteps (original, not respaced).
        context: (B or 1, L, D) cross-attention context.
        control: residuals from :class:`ControlModule`, or None for the bare UNet.
        hidden: return the last hidden state (what ``conv_out`` reads) instead of ε̂.
    """
    b = x.shape[0]
    context = context.expand(b, -1, -1)
    t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
    temb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
    enc = iter(control.encoder) if control is not None else None
    dec = iter(control.decoder) if control is not None else None

    def inject(h, it):
        return h if it is None else h + next(it)

    h = inject(unet.conv_in(x), enc)
    skips = [h]

    def after_unit(u):
        u = inject(u, enc)  # the modified state is what the skip stores and the next unit reads
        skips.append(u)
        return u

    h = _walk_down(unet.down_blocks, h, temb, context, after_unit)
    h = _mid(unet.mid_block, h, temb, context)
    if control is not None:
        h = h + control.middle
    for block in unet.up_blocks:
        for r, resnet in enumerate(block.resnets):
            h = inject(h, dec)
            h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
            if getattr(block, "has_cross_attention", False):
                h = block.attentions[r](h, encoder_hidden_states=context, return_dict=False)[0]
        if block.upsamplers is not None:
            h = block.upsamplers[0](h, skips[-1].shape[-2:])
    h = unet.conv_act(unet.conv_norm_out(h))
    return h if hidden else unet.conv_out(h)


def controlled_prediction(unet, control: ControlModule, x: torch.Tensor, t, context: torch.Tensor,
                          guide: torch.Tensor, z_c: torch.Tensor, detail: float = 1.0,
                          diffusion: dict | None = None) -> torch.Tensor:
    """What the sampler receives at (x_t, t), in float32: ε̂ or x̂0 (``control.prediction_type``).

    Args:
        x, guide: the noisy latent and the guide c, in the networks' dtype.
        t: an int or (B,) timesteps.
        z_c: the compressed latent at the same place (float32); only the anchored prediction reads it.
        detail: the guidance s. ε: bare + s·(controlled − bare) (0: the bare UNet; the bare pass is
            skipped at 1). Anchored: z_c + s·(x̂0 − z_c) (0: z_c itself, with no network run).
        diffusion: the profile's ``diffusion`` section (ᾱ and the relay start); the anchored prediction needs it.
    """
    if control.prediction == "anchored":
        if detail == 0:
            return z_c
        h = unet_forward(unet, x, t, context, control(x, t, guide, context), hidden=True)
        ab = torch.as_tensor(alphas_cumprod(diffusion), dtype=torch.float32, device=z_c.device)
        a = ab[torch.as_tensor(t, device=z_c.device).reshape(-1)].view(-1, 1, 1, 1)
        share = (1 / a - 1).sqrt() / float((1 / ab[diffusion["relay_start"]] - 1).sqrt())
        x0_eps = (x.float() - (1 - a).sqrt() * unet.conv_out(h).float()) / a.sqrt()
        correction = (1 - share) * (x0_eps - z_c) + control.anchor_head(h).float()
        return z_c + detail * correction
    controlled = unet_forward(unet, x, t, context, control(x, t, guide, context)) if detail else None
    if detail == 1.0:
        return controlled.float()
    bare = unet_forward(unet, x, t, context).float()
    return bare if controlled is None else bare + detail * (controlled.float() - bare)
