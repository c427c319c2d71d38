"""``rdeic convert``: the authors' checkpoints → an rdeic model directory.

The authors' files cannot be downloaded here, so these tests write small ones in the same key layout.
The layout is generated independently of the converter: from the original LDM / OpenCLIP / authors'
module structure (openaimodel's input_blocks/middle_block/output_blocks, the LDM autoencoder's
down/mid/up, OpenCLIP's resblocks, the method file's table of the compression module), with shapes.
The converted model's outputs are then compared with a functional computation straight from those
tensors (LDM naming), written here from the method file.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rdeic_codec import convert as cv
from rdeic_codec.model import load_model
from rdeic_codec.profiles import get_profile

torch.set_num_threads(1)


# -- the authors' key layout, from the original module structure ------------------------------------

def _conv(spec, p, cout, cin, k, bias=True):
    spec[p + "weight"] = (cout, cin, k, k)
    if bias:
        spec[p + "bias"] = (cout,)


def _lin(spec, p, cout, cin, bias=True):
    spec[p + "weight"] = (cout, cin)
    if bias:
        spec[p + "bias"] = (cout,)


def _norm(spec, p, c):
    spec[p + "weight"] = (c,)
    spec[p + "bias"] = (c,)


def ldm_resblock(spec, p, cin, cout, temb):
    _norm(spec, p + "in_layers.0.", cin)
    _conv(spec, p + "in_layers.2.", cout, cin, 3)
    _lin(spec, p + "emb_layers.1.", cout, temb)
    _norm(spec, p + "out_layers.0.", cout)
    _conv(spec, p + "out_layers.3.", cout, cout, 3)
    if cin != cout:
        _conv(spec, p + "skip_connection.", cout, cin, 1)


def ldm_transformer(spec, p, c, ctx):
    """SpatialTransformer with linear projections (SD 2.x), one BasicTransformerBlock."""
    _norm(spec, p + "norm.", c)
    _lin(spec, p + "proj_in.", c, c)
    t = p + "transformer_blocks.0."
    for attn, kv in (("attn1", c), ("attn2", ctx)):
        _lin(spec, f"{t}{attn}.to_q.", c, c, bias=False)
        _lin(spec, f"{t}{attn}.to_k.", c, kv, bias=False)
        _lin(spec, f"{t}{attn}.to_v.", c, kv, bias=False)
        _lin(spec, f"{t}{attn}.to_out.0.", c, c)
    _lin(spec, t + "ff.net.0.proj.", 8 * c, c)
    _lin(spec, t + "ff.net.2.", c, 4 * c)
    for n in (1, 2, 3):
        _norm(spec, f"{t}norm{n}.", c)
    _lin(spec, p + "proj_out.", c, c)


def ldm_unet_spec(prefix, chans, layers, attn_levels, in_ch, ctx, time_in, temb, decoder=True):
    """openaimodel.UNetModel's state dict layout (encoder + middle; decoder and out when ``decoder``)."""
    spec = {}
    _lin(spec, prefix + "time_embed.0.", temb, time_in)
    _lin(spec, prefix + "time_embed.2.", temb, temb)
    _conv(spec, prefix + "input_blocks.0.0.", chans[0], in_ch, 3)
    skip_chans, ch, idx = [chans[0]], chans[0], 1
    for level, out in enumerate(chans):
        for _ in range(layers):
            ldm_resblock(spec, f"{prefix}input_blocks.{idx}.0.", ch, out, temb)
            ch = out
            if attn_levels[level]:
                ldm_transformer(spec, f"{prefix}input_blocks.{idx}.1.", ch, ctx)
            skip_chans.append(ch)
            idx += 1
        if level < len(chans) - 1:
            _conv(spec, f"{prefix}input_blocks.{idx}.0.op.", ch, ch, 3)
            skip_chans.append(ch)
            idx += 1
    ldm_resblock(spec, prefix + "middle_block.0.", ch, ch, temb)
    ldm_transformer(spec, prefix + "middle_block.1.", ch, ctx)
    ldm_resblock(spec, prefix + "middle_block.2.", ch, ch, temb)
    if not decoder:
        return spec
    idx = 0
    for level in reversed(range(len(chans))):
        for i in range(layers + 1):
            out = chans[level]
            ldm_resblock(spec, f"{prefix}output_blocks.{idx}.0.", ch + skip_chans.pop(), out, temb)
            ch = out
            n = 1
            if attn_levels[level]:
                ldm_transformer(spec, f"{prefix}output_blocks.{idx}.1.", ch, ctx)
                n = 2
            if level and i == layers:
                _conv(spec, f"{prefix}output_blocks.{idx}.{n}.conv.", ch, ch, 3)
            idx += 1
    _norm(spec, prefix + "out.0.", chans[0])
    _conv(spec, prefix + "out.2.", 4, chans[0], 3)
    return spec


def ldm_vae_spec(cfg, prefix=cv.VAE_PREFIX):
    """The LDM AutoencoderKL (Encoder/Decoder with ResnetBlock, attn_1, nin_shortcut) layout."""
    spec, chans, layers = {}, cfg["block_out_channels"], cfg["layers_per_block"]
    z = cfg["latent_channels"]
    attn = cfg.get("mid_block_add_attention", True)

    def res(p, cin, cout):
        _norm(spec, p + "norm1.", cin)
        _conv(spec, p + "conv1.", cout, cin, 3)
        _norm(spec, p + "norm2.", cout)
        _conv(spec, p + "conv2.", cout, cout, 3)
        if cin != cout:
            _conv(spec, p + "nin_shortcut.", cout, cin, 1)

    def mid(p, c):
        res(p + "mid.block_1.", c, c)
        if attn:
            _norm(spec, p + "mid.attn_1.norm.", c)
            for n in ("q", "k", "v", "proj_out"):
                _conv(spec, f"{p}mid.attn_1.{n}.", c, c, 1)
        res(p + "mid.block_2.", c, c)

    e = prefix + "encoder."
    _conv(spec, e + "conv_in.", chans[0], 3, 3)
    ch = chans[0]
    for i, out in enumerate(chans):
        for j in range(layers):
            res(f"{e}down.{i}.block.{j}.", ch, out)
            ch = out
        if i < len(chans) - 1:
            _conv(spec, f"{e}down.{i}.downsample.conv.", ch, ch, 3)
    mid(e, ch)
    _norm(spec, e + "norm_out.", ch)
    _conv(spec, e + "conv_out.", 2 * z, ch, 3)
    _conv(spec, prefix + "quant_conv.", 2 * z, 2 * z, 1)
    _conv(spec, prefix + "post_quant_conv.", z, z, 1)
    d = prefix + "decoder."
    ch = chans[-1]
    _conv(spec, d + "conv_in.", ch, z, 3)
    mid(d, ch)
    for i in reversed(range(len(chans))):
        for j in range(layers + 1):
            res(f"{d}up.{i}.block.{j}.", ch, chans[i])
            ch = chans[i]
        if i:
            _conv(spec, f"{d}up.{i}.upsample.conv.", ch, ch, 3)
    _norm(spec, d + "norm_out.", chans[0])
    _conv(spec, d + "conv_out.", 3, chans[0], 3)
    return spec


def openclip_text_spec(length, width, layers, prefix=cv.TEXT_PREFIX):
    spec = {prefix + "token_embedding.weight": (49408, width), prefix + "positional_embedding": (length, width),
            prefix + "text_projection": (width, width), prefix + "logit_scale": ()}
    _norm(spec, prefix + "ln_final.", width)
    for i in range(layers):
        p = f"{prefix}transformer.resblocks.{i}."
        _norm(spec, p + "ln_1.", width)
        spec[p + "attn.in_proj_weight"] = (3 * width, width)
        spec[p + "attn.in_proj_bias"] = (3 * width,)
        _lin(spec, p + "attn.out_proj.", width, width)
        _norm(spec, p + "ln_2.", width)
        _lin(spec, p + "mlp.c_fc.", 4 * width, width)
        _lin(spec, p + "mlp.c_proj.", width, 4 * width)
    return spec


def schedule_spec():
    names = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
             "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
             "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
             "posterior_mean_coef1", "posterior_mean_coef2"]
    return {n: (1000,) for n in names}


def sd_spec(cfg, text_layers):
    u = cfg["unet"]
    attn = [t.startswith("CrossAttn") for t in u["down_block_types"]]
    ch0 = u["block_out_channels"][0]
    spec = ldm_unet_spec(cv.UNET_PREFIX, u["block_out_channels"], u["layers_per_block"], attn, 4,
                         u["cross_attention_dim"], ch0, 4 * ch0)
    spec.update(ldm_vae_spec(cfg["vae"]))
    _, length, width = cfg["context_shape"]
    spec.update(openclip_text_spec(length, width, text_layers))
    spec.update(schedule_spec())
    spec["model_ema.decay"] = ()
    spec["model_ema.num_updates"] = ()
    return spec


def rdeic_spec(cfg):
    """The authors' RDEIC file: control_model.* and preprocess_model.* (method file, sections 2, 3, 8)."""
    u, c, k = cfg["unet"], cfg["control"], cfg["compression"]
    attn = [t.startswith("CrossAttn") for t in u["down_block_types"]]
    chans = c["block_out_channels"]
    spec = ldm_unet_spec(cv.CONTROL_PREFIX, chans, u["layers_per_block"], attn, 4 + k["guide_channels"],
                         u["cross_attention_dim"], c["time_proj_channels"], c["time_embed_channels"], decoder=False)
    # Zero convs: control feature of each encoder unit → the SD UNet's channels there.
    own, target, layers = [chans[0]], [u["block_out_channels"][0]], u["layers_per_block"]
    for level, (a, b) in enumerate(zip(chans, u["block_out_channels"])):
        own += [a] * (layers + (level < len(chans) - 1))
        target += [b] * (layers + (level < len(chans) - 1))
    dec_target = []  # SD hidden state entering each decoder resnet
    cur, ub = u["block_out_channels"][-1], list(reversed(u["block_out_channels"]))
    for level_out in ub:
        for _ in range(layers + 1):
            dec_target.append(cur)
            cur = level_out
    n = len(own)
    for i in range(n):
        _conv(spec, f"control_model.enc_zero_convs_out.{i}.0.", target[i], own[i], 1)
        _conv(spec, f"control_model.dec_zero_convs_out.{i}.0.", dec_target[i], own[n - 1 - i], 1)
    _conv(spec, "control_model.middle_block_out.0.", u["block_out_channels"][-1], chans[-1], 1)
    spec["control_model.scale_list"] = (2 * n + 1,)

    p = "preprocess_model."
    f, N, M, h, g = k["feature_channels"], k["N"], k["M"], k["hyper_channels"], k["guide_channels"]

    def rb(q, cin, cout):
        _conv(spec, q + "conv1.", cout, cin, 3)
        _conv(spec, q + "conv2.", cout, cout, 3)
        if cin != cout:
            _conv(spec, q + "adaptor.", cout, cin, 1)

    def rbs(q, cin, cout):
        _conv(spec, q + "conv1.", cout, cin, 3)
        _conv(spec, q + "conv2.", cout, cout, 3)
        _conv(spec, q + "downsample.", cout, cin, 1)

    def rbu(q, cin, cout):
        _conv(spec, q + "subpel_conv.0.", 4 * cout, cin, 1)
        _conv(spec, q + "conv.", cout, cout, 3)
        _conv(spec, q + "upsample.0.", 4 * cout, cin, 1)

    ga = p + "encoder.g_a."
    for i, (kind, cin, cout) in enumerate([(rb, f, N), (rb, N, N), (rb, N, N), (rb, N, N), (rbs, N, N),
                                            (rb, N, N), (rb, N, N), (rb, N, N)]):
        kind(f"{ga}{i}.", cin, cout)
    _conv(spec, ga + "8.", M, N, 3)
    ha = p + "hyper_enc.hyper_enc."
    for i, (kind, cin, cout) in enumerate([(rb, M, h), (rb, h, h), (rbs, h, h), (rbs, h, h)]):
        kind(f"{ha}{i}.", cin, cout)
    hs = p + "hyper_dec.hyper_dec."
    for i, (kind, cin, cout) in enumerate([(rbu, h, h), (rbu, h, h), (rb, h, h * 3 // 2), (rb, h * 3 // 2, 2 * M)]):
        kind(f"{hs}{i}.", cin, cout)
    gs = p + "decoder.g_s."
    _conv(spec, gs + "0.", N, M, 3)
    for i, (kind, cin, cout) in enumerate([(rb, N, N), (rb, N, N), (rb, N, N), (rbu, N, N), (rb, N, N),
                                            (rb, N, N), (rb, N, N), (rb, N, g)], start=1):
        kind(f"{gs}{i}.", cin, cout)
    _conv(spec, p + "out.", 4, g, 3)
    slices, (h1, h2) = k["slices"], k["context_hidden"]
    for i, ci in enumerate(slices):
        _conv(spec, f"{p}local_context.{i}.", 2 * ci, ci, 5)
        if i:
            q = f"{p}channel_context.{i}.fushion."
            _conv(spec, q + "0.", h1, sum(slices[:i]), 5)
            _conv(spec, q + "2.", h2, h1, 5)
            _conv(spec, q + "4.", 2 * ci, h2, 5)
        channel = 2 * ci if i else 0
        for kind, cin in (("anchor", 2 * M + channel), ("nonanchor", 2 * M + 2 * ci + channel)):
            q = f"{p}entropy_parameters_{kind}.{i}.fusion."
            c2 = 2 * ci
            _conv(spec, q + "0.", 5 * c2 // 3, cin, 1)
            _conv(spec, q + "2.", 4 * c2 // 3, 5 * c2 // 3, 1)
            _conv(spec, q + "4.", c2, 4 * c2 // 3, 1)
    spec[p + "quantize.embedding.weight"] = (k["codebook_size"], h)
    spec[p + "quantize.embed_prob"] = (k["codebook_size"],)
    spec.update(gaussian_conditional_state(p + "gaussian_conditional."))
    spec.update(schedule_spec())
    spec.update(lpips_spec())
    return spec


def gaussian_conditional_state(prefix):
    """What ``compressai.entropy_models.GaussianConditional(None).state_dict()`` holds in compressai 1.2.4
    (read from its source: EntropyModel and LowerBound register these buffers, all persistent): the CDF
    tables, empty until ``update()``, and three constants. Values are tensors, not shapes: they are
    written to the fixture files as they are."""
    empty_int = torch.zeros(0, dtype=torch.int32)
    return {prefix + "_offset": empty_int, prefix + "_quantized_cdf": empty_int.clone(),
            prefix + "_cdf_length": empty_int.clone(), prefix + "scale_table": torch.zeros(0),
            prefix + "scale_bound": torch.tensor([0.11]),
            prefix + "likelihood_lower_bound.bound": torch.tensor([1e-9]),
            prefix + "lower_bound_scale.bound": torch.tensor([0.11])}


def lpips_spec():
    """The LPIPS (AlexNet) loss network that the fixed-step fine-tuned files may carry (shapes shrunk)."""
    spec = {f"perceptual_loss.scaling_layer.{n}": (1, 3, 1, 1) for n in ("shift", "scale", "mean", "std")}
    for s, i in ((1, 0), (2, 3), (3, 6), (4, 8), (5, 10)):
        _conv(spec, f"perceptual_loss.net.slice{s}.{i}.", 2, 2, 3)
        _conv(spec, f"perceptual_loss.lin{s - 1}.model.1.", 1, 2, 1, bias=False)
    return spec


def random_state(spec, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in spec.items():
        if isinstance(shape, torch.Tensor):  # a buffer with a fixed value
            out[key] = shape.clone()
        elif len(shape) == 0 or 0 in shape:
            out[key] = torch.zeros(shape)
        elif key.endswith("bias") or key.endswith("in_proj_bias"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # norms, scales, embed_prob
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            out[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return out


def tiny_config():
    cfg = get_profile("tiny")
    cfg["compression"]["lambdas"] = None
    return cfg


# -- a functional computation from the authors' tensors ---------------------------------------------

def conv(sd, p, x, **kw):
    return F.conv2d(x, sd[p + "weight"], sd[p + "bias"], **kw)


def rb(sd, p, x):
    out = F.leaky_relu(conv(sd, p + "conv1.", x, padding=1), 0.01)
    out = F.leaky_relu(conv(sd, p + "conv2.", out, padding=1), 0.01)
    return out + (conv(sd, p + "adaptor.", x) if p + "adaptor.weight" in sd else x)


def rbs(sd, p, x):
    out = F.leaky_relu(conv(sd, p + "conv1.", x, stride=2, padding=1), 0.01)
    out = F.leaky_relu(conv(sd, p + "conv2.", out, padding=1), 0.1)
    return out + conv(sd, p + "downsample.", x, stride=2)


def rbu(sd, p, x):
    out = F.leaky_relu(F.pixel_shuffle(conv(sd, p + "subpel_conv.0.", x), 2), 0.01)
    out = F.leaky_relu(conv(sd, p + "conv.", out, padding=1), 0.1)
    return out + F.pixel_shuffle(conv(sd, p + "upsample.0.", x), 2)


def reference_compression(sd, cfg, feature):
    """y, VQ indices, ŷ, c, z_c from the authors' tensors (method file, section 2)."""
    p = "preprocess_model."
    x = feature * cfg["feature_scale"]
    for i in range(8):
        x = (rbs if i == 4 else rb)(sd, f"{p}encoder.g_a.{i}.", x)
    y = conv(sd, p + "encoder.g_a.8.", x, padding=1)
    z = y
    for i, f in enumerate([rb, rb, rbs, rbs]):
        z = f(sd, f"{p}hyper_enc.hyper_enc.{i}.", z)
    book = sd[p + "quantize.embedding.weight"]
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    idx = torch.cdist(flat.double(), book.double()).argmin(1)
    hyper = book[idx].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    for i, f in enumerate([rbu, rbu, rb, rb]):
        hyper = f(sd, f"{p}hyper_dec.hyper_dec.{i}.", hyper)
    hh, ww = y.shape[2:]
    anchor = ((torch.arange(hh)[:, None] + torch.arange(ww)[None]) % 2 == 1).float()

    def ep(kind, i, inp):
        q = f"{p}entropy_parameters_{kind}.{i}.fusion."
        out = conv(sd, q + "4.", F.gelu(conv(sd, q + "2.", F.gelu(conv(sd, q + "0.", inp)))))
        half = out.shape[1] // 2
        return out[:, :half], out[:, half:]  # scales, means

    hats, start = [], 0
    for i, ci in enumerate(cfg["slices"]):
        ys = y[:, start:start + ci]
        start += ci
        shared = [hyper]
        if i:
            q = f"{p}channel_context.{i}.fushion."
            prev = torch.cat(hats, 1)
            cc = conv(sd, q + "4.", F.gelu(conv(sd, q + "2.", F.gelu(conv(sd, q + "0.", prev, padding=2)), padding=2)),
                      padding=2)
            shared = [cc, hyper]
        _, m_a = ep("anchor", i, torch.cat(shared, 1))
        hat_a = (torch.round(ys - m_a) + m_a) * anchor
        spatial = conv(sd, f"{p}local_context.{i}.", hat_a, padding=2)
        _, m_n = ep("nonanchor", i, torch.cat([spatial] + shared, 1))
        means = m_a * anchor + m_n * (1 - anchor)
        hats.append(torch.round(ys - means) + means)
    y_hat = torch.cat(hats, 1)
    c = conv(sd, p + "decoder.g_s.0.", y_hat, padding=1)
    for i in range(1, 9):
        c = (rbu if i == 4 else rb)(sd, f"{p}decoder.g_s.{i}.", c)
    return y, idx.view(z.shape[0], z.shape[2], z.shape[3]), y_hat, c, conv(sd, p + "out.", c, padding=1)


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor([float(t)])[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def ldm_res(sd, p, x, emb, groups):
    h = conv(sd, p + "in_layers.2.", F.silu(F.group_norm(x, groups, sd[p + "in_layers.0.weight"],
                                                         sd[p + "in_layers.0.bias"], 1e-5)), padding=1)
    h = h + F.linear(F.silu(emb), sd[p + "emb_layers.1.weight"], sd[p + "emb_layers.1.bias"])[:, :, None, None]
    h = conv(sd, p + "out_layers.3.", F.silu(F.group_norm(h, groups, sd[p + "out_layers.0.weight"],
                                                          sd[p + "out_layers.0.bias"], 1e-5)), padding=1)
    return h + (conv(sd, p + "skip_connection.", x) if p + "skip_connection.weight" in sd else x)


def ldm_attention(sd, p, x, ctx, heads):
    q, k, v = (F.linear(src, sd[f"{p}to_{n}.weight"]) for n, src in (("q", x), ("k", ctx), ("v", ctx)))
    b, n, c = q.shape

    def split(t):
        return t.reshape(b, t.shape[1], heads, -1).transpose(1, 2)

    att = torch.softmax(split(q) @ split(k).transpose(2, 3) / math.sqrt(c // heads), dim=-1)
    out = (att @ split(v)).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, sd[p + "to_out.0.weight"], sd[p + "to_out.0.bias"])


def ldm_transformer_fwd(sd, p, x, ctx, heads, groups):
    b, c, hh, ww = x.shape

    def ln(t, name):
        return F.layer_norm(t, (c,), sd[name + ".weight"], sd[name + ".bias"])

    h = F.group_norm(x, groups, sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)
    h = F.linear(h.flatten(2).transpose(1, 2), sd[p + "proj_in.weight"], sd[p + "proj_in.bias"])
    t = p + "transformer_blocks.0."
    n1 = ln(h, t + "norm1")
    h = ldm_attention(sd, t + "attn1.", n1, n1, heads) + h
    h = ldm_attention(sd, t + "attn2.", ln(h, t + "norm2"), ctx.expand(b, -1, -1), heads) + h
    a, gate = F.linear(ln(h, t + "norm3"), sd[t + "ff.net.0.proj.weight"], sd[t + "ff.net.0.proj.bias"]).chunk(2, -1)
    h = F.linear(a * F.gelu(gate), sd[t + "ff.net.2.weight"], sd[t + "ff.net.2.bias"]) + h
    h = F.linear(h, sd[p + "proj_out.weight"], sd[p + "proj_out.bias"])
    return h.transpose(1, 2).reshape(b, c, hh, ww) + x


def ldm_block(sd, p, h, emb, ctx, heads_of, groups):
    """One input/output block: resblock, optional transformer, optional down/upsample.
    ``heads_of(channels)``: attention heads of a transformer with that many channels."""
    if p + "0.op.weight" in sd:
        return conv(sd, p + "0.op.", h, stride=2, padding=1)
    h = ldm_res(sd, p + "0.", h, emb, groups)
    if p + "1.norm.weight" in sd:
        h = ldm_transformer_fwd(sd, p + "1.", h, ctx, heads_of(h.shape[1]), groups)
    for n in (1, 2):
        if f"{p}{n}.conv.weight" in sd:
            h = conv(sd, f"{p}{n}.conv.", F.interpolate(h, scale_factor=2.0, mode="nearest"), padding=1)
    return h


def _count(sd, prefix):
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def reference_control(sd, cfg, x, t, guide, ctx):
    """The control module's residuals (encoder units, middle, decoder units) from LDM-named tensors."""
    c, p = cfg["control"], cv.CONTROL_PREFIX
    groups = c["norm_num_groups"]
    emb = timestep_embedding(t, c["time_proj_channels"])
    emb = F.linear(F.silu(F.linear(emb, sd[p + "time_embed.0.weight"], sd[p + "time_embed.0.bias"])),
                   sd[p + "time_embed.2.weight"], sd[p + "time_embed.2.bias"])
    h = conv(sd, p + "input_blocks.0.0.", torch.cat([x, guide], 1), padding=1)
    feats = [h]
    def heads_of(channels):  # the control module's heads have a fixed width
        return channels // c["attention_head_dim"]

    for i in range(1, _count(sd, p + "input_blocks.")):
        h = ldm_block(sd, f"{p}input_blocks.{i}.", h, emb, ctx, heads_of, groups)
        feats.append(h)
    heads = heads_of(h.shape[1])
    h = ldm_res(sd, p + "middle_block.0.", h, emb, groups)
    h = ldm_transformer_fwd(sd, p + "middle_block.1.", h, ctx, heads, groups)
    h = ldm_res(sd, p + "middle_block.2.", h, emb, groups)
    s, n = sd["control_model.scale_list"], len(feats)
    enc = [conv(sd, f"control_model.enc_zero_convs_out.{i}.0.", f) * s[i] for i, f in enumerate(feats)]
    mid = conv(sd, "control_model.middle_block_out.0.", h) * s[n]
    dec = [conv(sd, f"control_model.dec_zero_convs_out.{j}.0.", feats[n - 1 - j]) * s[n + 1 + j] for j in range(n)]
    return enc, mid, dec


def reference_unet(sd, cfg, x, t, ctx, control=None):
    """SD's epsilon prediction with the control residuals added to the hidden state (method file, 3)."""
    u, p = cfg["unet"], cv.UNET_PREFIX
    groups, layers = u["norm_num_groups"], u["layers_per_block"]
    heads = u["attention_head_dim"]  # diffusers reads SD's "attention_head_dim" as the number of heads
    heads = heads if isinstance(heads, list) else [heads] * len(u["block_out_channels"])
    ch0 = u["block_out_channels"][0]
    emb = timestep_embedding(t, ch0)
    emb = F.linear(F.silu(F.linear(emb, sd[p + "time_embed.0.weight"], sd[p + "time_embed.0.bias"])),
                   sd[p + "time_embed.2.weight"], sd[p + "time_embed.2.bias"])
    enc, mid, dec = control if control is not None else (None, None, None)
    h = conv(sd, p + "input_blocks.0.0.", x, padding=1)
    h = h + enc[0] if enc else h
    skips = [h]
    for i in range(1, _count(sd, p + "input_blocks.")):
        level = (i - 1) // (layers + 1)
        h = ldm_block(sd, f"{p}input_blocks.{i}.", h, emb, ctx, lambda _, n=heads[level]: n, groups)
        h = h + enc[i] if enc else h
        skips.append(h)
    h = ldm_res(sd, p + "middle_block.0.", h, emb, groups)
    h = ldm_transformer_fwd(sd, p + "middle_block.1.", h, ctx, heads[-1], groups)
    h = ldm_res(sd, p + "middle_block.2.", h, emb, groups)
    h = h + mid if mid is not None else h
    for j in range(_count(sd, p + "output_blocks.")):
        level = len(heads) - 1 - j // (layers + 1)
        h = h + dec[j] if dec else h
        h = ldm_block(sd, f"{p}output_blocks.{j}.", torch.cat([h, skips.pop()], 1), emb, ctx,
                      lambda _, n=heads[level]: n, groups)
    h = F.silu(F.group_norm(h, groups, sd[p + "out.0.weight"], sd[p + "out.0.bias"], 1e-5))
    return conv(sd, p + "out.2.", h, padding=1)


def reference_vae(sd, cfg, image, latent):
    """The LDM autoencoder's encoder feature (before conv_out) and decoder output, from LDM names."""
    p, groups, chans = cv.VAE_PREFIX, cfg["norm_num_groups"], cfg["block_out_channels"]
    layers = cfg["layers_per_block"]

    def gn(x, name):
        return F.silu(F.group_norm(x, groups, sd[name + ".weight"], sd[name + ".bias"], 1e-6))

    def res(q, x):
        h = conv(sd, q + "conv1.", gn(x, q + "norm1"), padding=1)
        h = conv(sd, q + "conv2.", gn(h, q + "norm2"), padding=1)
        return h + (conv(sd, q + "nin_shortcut.", x) if q + "nin_shortcut.weight" in sd else x)

    def mid(q, x):
        assert q + "mid.attn_1.q.weight" not in sd  # the tiny profile has no mid attention
        return res(q + "mid.block_2.", res(q + "mid.block_1.", x))

    e = p + "encoder."
    h = conv(sd, e + "conv_in.", image, padding=1)
    for i in range(len(chans)):
        for j in range(layers):
            h = res(f"{e}down.{i}.block.{j}.", h)
        if i < len(chans) - 1:
            h = conv(sd, f"{e}down.{i}.downsample.conv.", F.pad(h, (0, 1, 0, 1)), stride=2)
    feature = gn(mid(e, h), e + "norm_out")
    d = p + "decoder."
    h = conv(sd, d + "conv_in.", conv(sd, p + "post_quant_conv.", latent), padding=1)
    h = mid(d, h)
    for i in reversed(range(len(chans))):
        for j in range(layers + 1):
            h = res(f"{d}up.{i}.block.{j}.", h)
        if i:
            h = conv(sd, f"{d}up.{i}.upsample.conv.", F.interpolate(h, scale_factor=2.0, mode="nearest"), padding=1)
    return feature, conv(sd, d + "conv_out.", gn(h, d + "norm_out"), padding=1)


def reference_text(sd, layers, length, width):
    """OpenCLIP's text transformer with torch.nn.MultiheadAttention, penultimate layer + ln_final."""
    p = cv.TEXT_PREFIX
    tokens = torch.tensor([[49406, 49407] + [0] * (length - 2)])
    x = sd[p + "token_embedding.weight"][tokens] + sd[p + "positional_embedding"]
    mask = torch.full((length, length), float("-inf")).triu(1)
    for i in range(layers):
        q = f"{p}transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(width, max(1, width // 64), batch_first=True)
        mha.load_state_dict({"in_proj_weight": sd[q + "attn.in_proj_weight"],
                             "in_proj_bias": sd[q + "attn.in_proj_bias"],
                             "out_proj.weight": sd[q + "attn.out_proj.weight"],
                             "out_proj.bias": sd[q + "attn.out_proj.bias"]})
        h = F.layer_norm(x, (width,), sd[q + "ln_1.weight"], sd[q + "ln_1.bias"])
        with torch.no_grad():
            x = x + mha(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = F.layer_norm(x, (width,), sd[q + "ln_2.weight"], sd[q + "ln_2.bias"])
        h = F.linear(F.gelu(F.linear(h, sd[q + "mlp.c_fc.weight"], sd[q + "mlp.c_fc.bias"])),
                     sd[q + "mlp.c_proj.weight"], sd[q + "mlp.c_proj.bias"])
        x = x + h
    return F.layer_norm(x, (width,), sd[p + "ln_final.weight"], sd[p + "ln_final.bias"])


# -- fixtures ---------------------------------------------------------------------------------------

TEXT_LAYERS = 3  # the last one is not used (SD 2.x takes the penultimate layer)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    cfg = tiny_config()
    folder = tmp_path_factory.mktemp("authors")
    sd = random_state(sd_spec(cfg, TEXT_LAYERS), seed=1)
    rdeic = random_state(rdeic_spec(cfg), seed=2)
    sd_path, rdeic_path = str(folder / "v2-1_512-ema-pruned.ckpt"), str(folder / "rdeic_2_step2.ckpt")
    torch.save({"state_dict": sd}, sd_path)
    torch.save({"state_dict": rdeic, "global_step": 1234}, rdeic_path)
    out = str(folder / "model")
    digests = {p: _sha256(p) for p in (sd_path, rdeic_path)}
    result = cv.convert(rdeic_path, out, sd_path=sd_path, profile="tiny")
    # Converted models are stored in float32: the references read the authors' values as they are.
    return {"cfg": cfg, "sd": sd, "rdeic": rdeic, "sd_path": sd_path, "rdeic_path": rdeic_path,
            "dir": out, "result": result, "folder": folder, "digests": digests,
            "sd_ref": {k: v.float() for k, v in sd.items()},
            "rdeic_ref": {k: v.float() for k, v in rdeic.items()}}


def _sha256(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def close(a, b, tol=1e-4):
    a, b = a.double(), b.double()
    return torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max())), rtol=tol)


# -- tests ------------------------------------------------------------------------------------------

def test_convert_writes_a_loadable_model(checkpoints):
    model = load_model(checkpoints["dir"])
    assert model.config["lambda"] == 2.0
    assert model.config["compression"]["lambdas"] is None
    assert model.config["entropy"]["scale_rule"] == "lower_bound_ceil"  # coded as the authors trained it
    assert model.config["fine_tuned_steps"] == 2 and model.config["name"] == "rdeic-tiny-l2-s2"
    assert model.config["model_id"] == checkpoints["result"].model_id
    ignored = {k for k, _ in checkpoints["result"].ignored}
    # Exactly the recomputable/unused keys are ignored, and they are listed.
    expected = set(schedule_spec()) | {"model_ema.decay", "model_ema.num_updates"}
    expected |= set(gaussian_conditional_state("preprocess_model.gaussian_conditional."))
    expected |= {cv.TEXT_PREFIX + n for n in ("text_projection", "logit_scale")} | set(lpips_spec())
    last = f"{cv.TEXT_PREFIX}transformer.resblocks.{TEXT_LAYERS - 1}."
    expected |= {k for k in checkpoints["sd"] if k.startswith(last)}
    assert ignored == expected
    assert checkpoints["result"].overridden == len(schedule_spec())  # both files carry the schedule
    # The inputs are memory-mapped privately: rounding the model while saving never writes to them.
    assert all(_sha256(p) == d for p, d in checkpoints["digests"].items())


def test_storage_is_float32_unless_asked_and_the_context_always(checkpoints, tmp_path):
    """Default: every stored tensor holds the authors' value exactly. --dtype float16 halves the large
    tensors' disk; the empty-prompt context stays float32 either way."""
    from safetensors import safe_open

    def stored(folder, comp):
        with safe_open(os.path.join(folder, f"{comp}.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    rdeic, sd = checkpoints["rdeic"], checkpoints["sd"]
    full = stored(checkpoints["dir"], "compression")
    assert all(v.dtype == torch.float32 for v in full.values())
    assert torch.equal(full["g_a.0.conv1.weight"], rdeic["preprocess_model.encoder.g_a.0.conv1.weight"])
    unet = stored(checkpoints["dir"], "unet")
    assert all(v.dtype == torch.float32 for v in unet.values())
    assert torch.equal(unet["conv_in.weight"], sd[cv.UNET_PREFIX + "input_blocks.0.0.weight"])

    out = str(tmp_path / "half")
    cv.convert(checkpoints["rdeic_path"], out, sd_path=checkpoints["sd_path"], profile="tiny", dtype="float16")
    half = stored(out, "compression")
    big = [k for k, v in full.items() if v.numel() >= 1024]
    assert big and all(half[k].dtype == torch.float16 for k in big)
    assert half["quantize.embed_prob"].dtype == torch.float32
    # The context (here 3×8 values; 77×1024 in the paper profile) is float32 whatever its size.
    ref_ctx = load_model(checkpoints["dir"]).unet.context
    assert stored(out, "unet")["context"].dtype == torch.float32
    assert torch.equal(load_model(out).unet.context, ref_ctx)
    with pytest.raises(cv.ConvertError, match="--dtype must be"):
        cv.convert(checkpoints["rdeic_path"], str(tmp_path / "x"), sd_path=checkpoints["sd_path"],
                   profile="tiny", dtype="bfloat16")


def test_float16_storage_keeps_a_large_context_in_float32(tmp_path):
    """save_model's float16 storage: the cross-attention context stays float32 at the paper's 77×1024."""
    from safetensors import safe_open

    from rdeic_codec.model import RDEICModel, save_model

    cfg = tiny_config()
    cfg["context_shape"] = [1, 77, 1024]
    cfg["unet"]["cross_attention_dim"] = 1024
    model = RDEICModel(cfg)
    with torch.no_grad():
        model.unet.context.normal_()
    ctx = model.unet.context.clone()
    save_model(model, str(tmp_path / "m"))
    with safe_open(str(tmp_path / "m" / "unet.safetensors"), "pt") as f:
        assert f.get_tensor("context").dtype == torch.float32
        assert f.get_tensor("conv_in.weight").dtype == torch.float32  # < 1024 values
        assert any(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    assert torch.equal(model.unet.context, ctx)


def test_compression_matches_the_authors_tensors(checkpoints):
    cfg, rdeic = checkpoints["cfg"], checkpoints["rdeic_ref"]
    model = load_model(checkpoints["dir"])
    comp = model.compression
    feature = torch.randn(1, cfg["compression"]["feature_channels"], 8, 8, generator=torch.Generator().manual_seed(3))
    y_ref, idx_ref, y_hat_ref, c_ref, zc_ref = reference_compression(rdeic, cfg["compression"], feature)
    with torch.no_grad():
        lam = torch.tensor([2.0])
        y, idx = comp.analyse(feature, lam)
        hyper = comp.h_s(comp.quantize.lookup(idx))
        mask = torch.zeros(1, 1, *y.shape[2:])
        mask[..., (torch.arange(y.shape[2])[:, None] + torch.arange(y.shape[3])) % 2 == 1] = 1
        hats = []
        for i, ys in enumerate(y.split(comp.context.slices, dim=1)):
            shared = comp.context.slice_inputs(i, hyper, hats)
            _, m_a = comp.context.anchor_params(i, shared)
            hat_a = (torch.round(ys - m_a) + m_a) * mask
            _, m_n = comp.context.nonanchor_params(i, shared, hat_a)
            means = m_a * mask + m_n * (1 - mask)
            hats.append(torch.round(ys - means) + means)
        y_hat = torch.cat(hats, 1)
        c, z_c = comp.synthesise(y_hat, lam)
    assert close(y, y_ref)
    assert torch.equal(idx, idx_ref)
    assert close(y_hat, y_hat_ref)
    assert close(c, c_ref)
    assert close(z_c, zc_ref)
    assert torch.equal(comp.quantize.embed_prob, rdeic["preprocess_model.quantize.embed_prob"])


def test_context_is_the_text_towers_penultimate_layer(checkpoints):
    cfg, sd = checkpoints["cfg"], checkpoints["sd"]
    _, length, width = cfg["context_shape"]
    model = load_model(checkpoints["dir"])
    ref = reference_text(sd, TEXT_LAYERS - 1, length, width)
    assert model.unet.context.shape == (1, length, width)
    assert close(model.unet.context, ref, 1e-5)


def test_control_residuals_and_one_denoising_step(checkpoints):
    from rdeic_codec.networks.control import unet_forward
    from rdeic_codec.sampler import predict_x0, step_coefficients

    cfg, sd, rdeic = checkpoints["cfg"], checkpoints["sd_ref"], checkpoints["rdeic_ref"]
    model = load_model(checkpoints["dir"])
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 8, 8, generator=g)
    guide = torch.randn(1, cfg["compression"]["guide_channels"], 8, 8, generator=g)
    ctx = model.unet.context
    co = step_coefficients(cfg["diffusion"], 2)[0]
    enc, mid, dec = reference_control(rdeic, cfg, x, co.t, guide, ctx)
    eps_ref = reference_unet(sd, cfg, x, co.t, ctx, (enc, mid, dec))
    bare_ref = reference_unet(sd, cfg, x, co.t, ctx)
    with torch.no_grad():
        res = model.control(x, co.t, guide, ctx)
        eps = unet_forward(model.unet, x, co.t, ctx, res)
        bare = unet_forward(model.unet, x, co.t, ctx)
    assert len(res.encoder) == len(enc) == 12 and len(res.decoder) == len(dec) == 12
    for a, b in zip(res.encoder + [res.middle] + res.decoder, enc + [mid] + dec):
        assert close(a, b)
    assert close(bare, bare_ref)
    assert close(eps, eps_ref)
    assert not close(eps, bare)  # the control residuals matter
    step = co.c1 * predict_x0(x, eps, co.alpha_bar) + co.c2 * x
    step_ref = co.c1 * (x / math.sqrt(co.alpha_bar) - math.sqrt(1 / co.alpha_bar - 1) * eps_ref) + co.c2 * x
    assert close(step, step_ref)


def test_vae_matches_the_authors_tensors(checkpoints):
    from rdeic_codec.networks.autoencoder import encoder_feature

    cfg, sd = checkpoints["cfg"], checkpoints["sd_ref"]
    model = load_model(checkpoints["dir"])
    g = torch.Generator().manual_seed(6)
    image, latent = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.randn(1, 4, 4, 4, generator=g)
    feature_ref, decoded_ref = reference_vae(sd, cfg["vae"], image, latent)
    with torch.no_grad():
        assert close(encoder_feature(model.vae, image), feature_ref)
        assert close(model.vae.decode(latent).sample, decoded_ref)
    # Spot checks of the names (decoder levels are stored in reverse order).
    vae = model.vae.state_dict()
    p = cv.VAE_PREFIX
    assert torch.equal(vae["decoder.up_blocks.0.resnets.0.conv1.weight"], sd[p + "decoder.up.3.block.0.conv1.weight"])
    assert torch.equal(vae["decoder.up_blocks.3.resnets.1.norm2.bias"], sd[p + "decoder.up.0.block.1.norm2.bias"])
    assert torch.equal(vae["encoder.down_blocks.2.resnets.0.conv_shortcut.weight"],
                       sd[p + "encoder.down.2.block.0.nin_shortcut.weight"])
    assert torch.equal(vae["encoder.conv_norm_out.weight"], sd[p + "encoder.norm_out.weight"])


def test_converted_model_codes_an_image(checkpoints):
    from rdeic_codec import codec

    model = load_model(checkpoints["dir"])
    image = (np.random.default_rng(5).random((40, 56, 3)) * 255).astype(np.uint8)
    with pytest.raises(codec.CodecError, match="trained for"):
        codec.encode(model, image, 0.5)
    data = codec.encode(model, image, 2.0).data
    out = codec.decode(model, data, steps=2)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, codec.decode(model, data, steps=2))


def test_unknown_missing_and_misshaped_keys_are_listed(checkpoints, tmp_path):
    bad = dict(checkpoints["rdeic"])
    bad["preprocess_model.something_new.weight"] = torch.zeros(3)
    del bad["control_model.enc_zero_convs_out.3.0.bias"]
    bad["preprocess_model.out.weight"] = torch.zeros(4, 5, 3, 3)
    path = str(tmp_path / "rdeic_2_step2.ckpt")
    torch.save({"state_dict": bad}, path)
    with pytest.raises(cv.ConvertError) as err:
        cv.convert(path, str(tmp_path / "m"), sd_path=checkpoints["sd_path"], profile="tiny")
    msg = str(err.value)
    assert "1 unknown key(s): preprocess_model.something_new.weight" in msg
    assert "1 missing tensor(s): control.enc_zero_convs.3.bias" in msg
    assert "preprocess_model.out.weight (4, 5, 3, 3) -> compression.out.weight (4, 8, 3, 3)" in msg
    assert not os.path.exists(tmp_path / "m")


def test_compressai_constants_are_checked(checkpoints, tmp_path):
    """The released files hold compressai's CDF tables filled by ``update()`` and its three constants:
    filled tables are ignored whatever their size, and a constant rdeic does not implement is refused."""
    p = "preprocess_model.gaussian_conditional."
    filled = dict(checkpoints["rdeic"])
    filled[p + "scale_table"] = torch.exp(torch.linspace(math.log(0.11), math.log(256), 64))
    filled[p + "_offset"] = torch.full((64,), -3, dtype=torch.int32)
    filled[p + "_cdf_length"] = torch.full((64,), 9, dtype=torch.int32)
    filled[p + "_quantized_cdf"] = torch.zeros(64, 20, dtype=torch.int32)
    path = str(tmp_path / "rdeic_2_step2.ckpt")
    torch.save({"state_dict": filled}, path)
    result = cv.convert(path, str(tmp_path / "ok"), sd_path=checkpoints["sd_path"], profile="tiny")
    assert result.model_id == checkpoints["result"].model_id
    for key, value in ((p + "scale_bound", torch.tensor([0.2])),
                       (p + "likelihood_lower_bound.bound", torch.tensor([1e-6]))):
        bad = dict(checkpoints["rdeic"])
        bad[key] = value
        torch.save({"state_dict": bad}, path)
        with pytest.raises(cv.ConvertError, match=key.replace(".", r"\.") + " is "):
            cv.convert(path, str(tmp_path / "m"), sd_path=checkpoints["sd_path"], profile="tiny")
        assert not os.path.exists(tmp_path / "m")


def test_fixture_holds_what_compressai_saves():
    """The fixture's GaussianConditional keys are what compressai's module saves (when it is installed)."""
    entropy_models = pytest.importorskip("compressai.entropy_models")
    saved = entropy_models.GaussianConditional(None).state_dict()
    ours = gaussian_conditional_state("")
    assert saved.keys() == ours.keys()
    for key, value in saved.items():
        assert value.dtype == ours[key].dtype and value.shape == ours[key].shape, key
        assert torch.equal(value, ours[key]), key


def test_no_text_tower_needs_context(checkpoints, tmp_path):
    from safetensors.torch import save_file

    cfg = checkpoints["cfg"]
    sd = {k: v for k, v in checkpoints["sd"].items() if not k.startswith(cv.TEXT_PREFIX)}
    path = str(tmp_path / "sd.ckpt")
    torch.save({"state_dict": sd}, path)
    with pytest.raises(cv.ConvertError, match="or pass --context"):
        cv.convert(checkpoints["rdeic_path"], str(tmp_path / "m"), sd_path=path, profile="tiny")
    ctx = torch.randn(cfg["context_shape"])
    save_file({"context": ctx}, str(tmp_path / "ctx.safetensors"))
    cv.convert(checkpoints["rdeic_path"], str(tmp_path / "m"), sd_path=path, profile="tiny", lam=0.5,
               context_path=str(tmp_path / "ctx.safetensors"))
    model = load_model(str(tmp_path / "m"))
    assert torch.equal(model.unet.context, ctx) and model.config["lambda"] == 0.5


def test_pickled_code_is_refused(tmp_path):
    path = str(tmp_path / "rdeic_1_step5.ckpt")
    torch.save({"state_dict": {}, "hook": os.path.join}, path)
    with pytest.raises(cv.ConvertError, match="no code is unpickled"):
        cv.read_checkpoint(path)


def test_lambda_from_name():
    assert cv.lambda_from_name("/x/rdeic_2_step2.ckpt") == (2.0, 2)
    assert cv.lambda_from_name("rdeic_0.25_step5.ckpt") == (0.25, 5)
    assert cv.lambda_from_name("model.ckpt") == (None, None)
    with pytest.raises(cv.ConvertError, match="pass --lambda"):
        cv.convert("model.ckpt", "/nonexistent/out")


def test_diffusers_folder_gives_the_same_model(checkpoints, tmp_path):
    """SD from a diffusers folder (unet/, vae/, text_encoder/ in transformers naming) = SD from the .ckpt."""
    from safetensors.torch import save_file

    ref = load_model(checkpoints["dir"])
    folder = tmp_path / "sd21"
    for sub in ("unet", "vae", "text_encoder"):
        (folder / sub).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.unet.state_dict().items() if k != "context"},
              str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    old = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    vae = {}
    for k, v in ref.vae.state_dict().items():
        for a, b in old.items():
            k = k.replace(a, b)
        vae[k] = v.contiguous()
    save_file(vae, str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    sd, p = checkpoints["sd"], cv.TEXT_PREFIX
    width = sd[p + "positional_embedding"].shape[1]
    text = {"text_model.embeddings.token_embedding.weight": sd[p + "token_embedding.weight"],
            "text_model.embeddings.position_embedding.weight": sd[p + "positional_embedding"],
            "text_model.embeddings.position_ids": torch.arange(sd[p + "positional_embedding"].shape[0])[None],
            "text_model.final_layer_norm.weight": sd[p + "ln_final.weight"],
            "text_model.final_layer_norm.bias": sd[p + "ln_final.bias"]}
    for i in range(TEXT_LAYERS - 1):  # diffusers' SD 2.x text encoder stops at the penultimate layer
        q, h = f"{p}transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for n, part in enumerate("qkv"):
            text[f"{h}self_attn.{part}_proj.weight"] = sd[q + "attn.in_proj_weight"][n * width:(n + 1) * width]
            text[f"{h}self_attn.{part}_proj.bias"] = sd[q + "attn.in_proj_bias"][n * width:(n + 1) * width]
        for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            text[f"{h}{b}.weight"] = sd[f"{q}{a}.weight"]
            text[f"{h}{b}.bias"] = sd[f"{q}{a}.bias"]
    save_file({k: v.contiguous() for k, v in text.items()}, str(folder / "text_encoder" / "model.safetensors"))
    result = cv.convert(checkpoints["rdeic_path"], str(tmp_path / "m"), sd_path=str(folder), profile="tiny")
    got = load_model(str(tmp_path / "m"))
    assert result.model_id == checkpoints["result"].model_id  # bit for bit the same model
    for comp in ("compression", "control", "unet", "vae"):
        a, b = got.component(comp).state_dict(), ref.component(comp).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert close(a[k], b[k], 1e-6), (comp, k)


def test_cli_convert(checkpoints, tmp_path):
    from click.testing import CliRunner

    from rdeic_codec.cli import main

    out = str(tmp_path / "m")
    args = ["convert", "--rdeic", checkpoints["rdeic_path"], "--sd", checkpoints["sd_path"], "-o", out,
            "--profile", "tiny"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    # Same checkpoints, same model id, whatever the output directory is called.
    assert f"model {checkpoints['result'].model_id}, lambda 2, " in r.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "exists (use --force" in r.output
    assert CliRunner().invoke(main, args + ["--force", "-q"]).exit_code == 0
    r = CliRunner().invoke(main, args + ["--force", "--dtype", "float16"])
    assert r.exit_code == 0, r.output
    assert checkpoints["result"].model_id not in r.output  # other stored values, another model


def test_paper_size_key_set_maps_completely():
    """Full size (SD 2.1-base + the paper's modules), on the meta device: every key of the authors' two
    files is mapped or deliberately ignored, and every tensor of our model gets a value of its shape."""
    cfg = get_profile("paper")
    cfg["compression"]["lambdas"] = None
    spec = sd_spec(cfg, 24)
    spec.update(rdeic_spec(cfg))
    state = {k: torch.empty(tuple(s.shape) if isinstance(s, torch.Tensor) else s, device="meta",
                            dtype=s.dtype if isinstance(s, torch.Tensor) else torch.float32) for k, s in spec.items()}
    mapped = cv.map_checkpoint(state, cfg)
    weights = cv.check_complete(mapped, cfg)  # raises on any unknown, missing or misshaped key
    shapes = cv.expected_shapes(cfg)
    for comp, want in shapes.items():
        got = {k: tuple(v.shape) for k, v in weights[comp].items()}
        assert got == {k: s for k, s in want.items() if not (comp == "unet" and k == "context")}, comp
    used = set(mapped.source.values()) | {cv.TEXT_PREFIX + k for k in mapped.text}
    ignored = {k for k, _ in mapped.ignored}
    assert used | ignored == set(spec) and not used & ignored
    assert mapped.text_layers == 23
    # schedule, EMA, CDF tables and constants of compressai, projection/logit, last text layer, LPIPS
    assert len(ignored) == 12 + 2 + 4 + 3 + 2 + 12 + len(lpips_spec())
    # Sizes of the paper (method file, sections 2 and 3).
    n_comp = sum(math.prod(s) for s in shapes["compression"].values())
    n_ctrl = sum(math.prod(s) for s in shapes["control"].values())
    assert 50e6 < n_comp < 54e6 and 23e6 < n_ctrl < 27e6


def test_paper_profile_decodes_large_images_in_vae_tiles(checkpoints):
    """The paper profile's autoencoder and UNet run in 512-px tiles (SD's native size, as diffusers' own
    VAE tiling); images within one tile decode as before, larger ones tile by tile."""
    from rdeic_codec import codec, tiled

    model = load_model(checkpoints["dir"])
    rng = np.random.default_rng(7)
    small = codec.encode(model, (rng.random((64, 64, 3)) * 255).astype(np.uint8), 2.0).data
    large = codec.encode(model, (rng.random((128, 96, 3)) * 255).astype(np.uint8), 2.0).data
    plain_small, plain_large = codec.decode(model, small, steps=2), codec.decode(model, large, steps=2)
    model.config["profile"] = "paper"
    assert tiled.tiles(model)["decoder"] == (512, 128)
    assert np.array_equal(codec.decode(model, small, steps=2), plain_small)
    assert np.array_equal(codec.decode(model, large, steps=2), plain_large)
    model.config["tiling"] = {"decoder": (64, 32)}  # the tiny VAE's images are smaller than 512 px
    tiled_large = codec.decode(model, large, steps=2)
    assert tiled_large.shape == plain_large.shape == (128, 96, 3)
    assert not np.array_equal(tiled_large, plain_large)  # decoded tile by tile
