"""Training in bfloat16 autocast: what must stay float32 does, and every stage trains in it."""

import os

import pytest
import torch
from PIL import Image

from rdeic_codec import codec
from rdeic_codec.model import RDEICModel, load_model
from rdeic_codec.profiles import get_profile
from rdeic_codec.training import pipeline, precision
from rdeic_codec.training.losses import ms_ssim_loss
from rdeic_codec.training.stage_rdeic import compression_loss, compression_source

from conftest import smooth_image

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture
def bf16_training():
    precision.set_precision("bf16")
    yield
    precision.set_precision("fp32")


def test_the_setting_is_checked_and_auto_follows_the_hardware():
    with pytest.raises(ValueError, match="precision"):
        precision.set_precision("fp16")
    precision.set_precision("auto")
    try:
        cpu = torch.device("cpu")
        assert precision.resolved(cpu) == ("bf16" if precision.native_bf16(cpu) else "fp32")
    finally:
        precision.set_precision("fp32")
    assert precision.resolved(torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("profile", ["tiny", "tiny-hyperprior"])
def test_rates_and_losses_stay_float32_under_autocast(profile):
    """The rate (rounding and likelihoods) and the pixel losses are float32 under a bfloat16 autocast, and
    the rate comes out as in float32 up to the bfloat16 convolutions before it."""
    torch.manual_seed(0)
    model = RDEICModel(get_profile(profile)).eval()
    model.compression.cfg.update(zc_pixel_weight=1.0, zc_msssim_weight=0.5, rate_proxy="hard")
    z = torch.randn(2, model.config["unet"]["in_channels"], 16, 16)
    feature = torch.randn(2, model.config["compression"]["feature_channels"], 16, 16)
    source = compression_source(model, feature, z)
    lam = torch.tensor([0.1, 2.0])
    with torch.no_grad():
        exact = model.compression(source, lam)["bits"]
        with torch.autocast(**BF16):
            out = model.compression(source, lam)
            loss, logs = compression_loss(model, feature, z, lam, torch.Generator().manual_seed(0))
    assert out["bits"].dtype == torch.float32 and loss.dtype == torch.float32
    if profile == "tiny":  # the paper's module runs wholly in float32: the same bits
        assert torch.equal(out["bits"], exact)
    else:
        assert torch.allclose(out["bits"], exact, rtol=0.1)
    assert 0 < logs["msssim_zc"] < 1


def test_the_context_stage_rate_is_float32_and_exact_under_autocast():
    """The context stage's loss is a rate alone: under a bfloat16 autocast it is the float32 rate exactly."""
    from rdeic_codec.training.stage_context import context_loss

    torch.manual_seed(0)
    model = RDEICModel(get_profile("tiny-hyperprior")).eval()
    for net in model.compression.context.nonanchor_correction:  # a context that acts (they start at zero)
        torch.nn.init.normal_(net[-1].weight, std=0.05)
    z = torch.randn(2, model.config["unet"]["in_channels"], 16, 16)
    lam = torch.tensor([0.1, 2.0])
    with torch.no_grad():
        exact, _ = context_loss(model, None, z, lam, rounded=True)
        with torch.autocast(**BF16):
            mixed, _ = context_loss(model, None, z, lam, rounded=True)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, exact)


def test_ms_ssim_is_computed_in_float32_under_autocast():
    a = torch.rand(2, 3, 64, 64) * 2 - 1
    b = (a + 0.1 * torch.randn_like(a)).clamp(-1, 1)
    exact = ms_ssim_loss(a, b)
    with torch.autocast(**BF16):
        mixed = ms_ssim_loss(a, b)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, exact)


def test_every_stage_trains_in_bf16_and_says_so(tmp_path, bf16_training, capsys):
    for split, n in (("train", 3), ("valid", 2)):
        os.makedirs(tmp_path / split)
        for i in range(n):
            Image.fromarray(smooth_image(256, 256, seed=i)).save(tmp_path / split / f"{i}.png")
    lines = []
    out = tmp_path / "model"
    pipeline.run(str(tmp_path / "train"), str(tmp_path / "valid"), str(tmp_path / "work"), str(out),
                 profile="tiny-anchored", steps={name: 1 for name in pipeline.STAGES}, log=lines.append)
    model = load_model(str(out))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    image = smooth_image(64, 64)
    assert codec.decode(model, codec.encode(model, image, 1.0).data, steps=2).shape == image.shape
    log = open(tmp_path / "work" / "finetune" / "valid.log").read()
    assert "nan" not in log.lower()
    said = capsys.readouterr()
    # The synthesis stage runs for a profile that trains its context after the module (this one trains it
    # jointly); it is the compression stage's loop on other parts (test_hyperprior runs it).
    for stage in (s for s in pipeline.STAGES if s != "synthesis"):
        assert f"{stage}: training steps in bf16" in said.out + said.err
