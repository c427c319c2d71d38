"""Network structure: paper-scale parameter counts, the control injection, rate gains."""

import pytest
import torch

from rdeic_codec.networks.compression import CompressionModule, anchor_mask
from rdeic_codec.networks.control import ControlModule, build_unet, unet_forward
from rdeic_codec.profiles import get_profile


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_profile_parameter_counts():
    cfg = get_profile("paper")
    with torch.device("meta"):
        comp = CompressionModule(cfg["compression"])
        unet = build_unet(cfg["unet"])
        control = ControlModule(cfg["control"], cfg["unet"], cfg["compression"]["guide_channels"], unet)
    # Method file: compression module ≈ 52M, control ≈ 25M; SD 2.1's UNet has 865.9M.
    assert count(comp) / 1e6 == pytest.approx(52.1, abs=0.5)
    assert count(control) / 1e6 == pytest.approx(24.6, abs=0.5)
    assert count(unet) / 1e6 == pytest.approx(865.9, abs=0.1)
    assert len(control.enc_zero_convs) == 12 and len(control.dec_zero_convs) == 12
    assert control.scales.numel() == 25


def test_zero_control_equals_bare_unet():
    cfg = get_profile("tiny")
    torch.manual_seed(0)
    unet = build_unet(cfg["unet"])
    control = ControlModule(cfg["control"], cfg["unet"], cfg["compression"]["guide_channels"], unet)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([10, 250]), torch.randn(1, 3, 8)
    guide = torch.randn(2, cfg["compression"]["guide_channels"], 16, 16)
    with torch.no_grad():
        reference = unet(x, t, ctx.expand(2, -1, -1)).sample
        walked = unet_forward(unet, x, t, ctx, control(x, t, guide, ctx))
        assert torch.equal(walked, reference)
        for conv in control.dec_zero_convs:
            torch.nn.init.normal_(conv.weight)
        assert not torch.allclose(unet_forward(unet, x, t, ctx, control(x, t, guide, ctx)), reference)


def test_anchors_are_odd_positions():
    m = anchor_mask(3, 4)[0, 0]
    assert m[0, 1] == 1 and m[0, 0] == 0 and m[1, 0] == 1 and m[2, 2] == 0


def test_gains_interpolate_in_log_lambda():
    comp = CompressionModule(get_profile("tiny")["compression"])
    lams = torch.tensor([0.1, 0.2, 0.5, 1.0, 2.0])
    gain, inv = comp.gains(lams)
    mean_gain = gain.flatten(1).mean(1)
    assert torch.all(mean_gain[1:] > mean_gain[:-1])  # more bits as λ grows, at initialisation
    g_lo, _ = comp.gains(torch.tensor([0.1]))
    assert torch.allclose(g_lo[0, :, 0, 0], comp.log_gain[0].exp())


def test_the_shuffle_autoencoder_has_no_full_resolution_convolution():
    """Every convolution of the small profile's autoencoder runs at 1/4 or 1/8 of the image's size."""
    from rdeic_codec.networks.autoencoder import build_vae, decode_latent, encoder_feature, latent_from_feature

    vae = build_vae(get_profile("small")["vae"])
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-1]))
             for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    x = torch.zeros(1, 3, 64, 96)
    with torch.no_grad():
        feature = encoder_feature(vae, x)
        latent = latent_from_feature(vae, feature)
        out = decode_latent(vae, latent)
    for h in hooks:
        h.remove()
    assert feature.shape == (1, 128, 8, 12) and latent.shape == (1, 16, 8, 12) and out.shape == x.shape
    assert sizes and max(sizes) <= 96 // 4
