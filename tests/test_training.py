"""`rdeic train` on the tiny profile: every stage runs, resumes, and yields a loadable model."""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rdeic_codec import codec
from rdeic_codec.model import load_model
from rdeic_codec.training import pipeline
from rdeic_codec.training.checkpoint import load_checkpoint
from rdeic_codec.training.losses import ms_ssim_loss

from conftest import smooth_image


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for split, n in (("train", 3), ("valid", 2)):
        os.makedirs(root / split)
        for i in range(n):
            Image.fromarray(smooth_image(256, 256, seed=i + 10 * n)).save(root / split / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def first_stages(folders, tmp_path_factory):
    """The tiny profile's first four stages, one iteration each, and the model written from them: the
    starting point of the tests that run a later stage (they copy the work folder, never change it)."""
    root = tmp_path_factory.mktemp("first")
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(root / "work"), str(root / "model"),
                 profile="tiny", stages=("autoencoder", "denoiser", "compression", "stage1"),
                 steps={"autoencoder": 1, "denoiser": 1, "compression": 1, "stage1": 1}, log=lambda m: None)
    return root


def test_all_stages_then_resume(folders, tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    steps = {name: 1 for name in pipeline.STAGES}
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), str(out), profile="tiny", steps=steps,
                 log=lambda m: None)
    for stage in pipeline.STAGES:
        # The paper design has contexts of its own; these two stages are for the hyperprior's.
        if stage not in ("context", "synthesis"):
            assert os.path.exists(work / stage / "done"), stage
    model = load_model(str(out))
    image = smooth_image(64, 64)
    assert codec.decode(model, codec.encode(model, image, 1.0).data, steps=2).shape == image.shape
    # Asking for more steps resumes from the checkpoint instead of starting over.
    os.remove(work / "denoiser" / "done")
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), None, profile="tiny",
                 stages=("denoiser",), steps={"denoiser": 2}, log=lambda m: None)
    from rdeic_codec.training.stage_denoiser import BaseDenoiser
    from rdeic_codec.profiles import get_profile

    meta = load_checkpoint(str(work / "denoiser"), {"denoiser": BaseDenoiser(get_profile("tiny"))})
    assert meta["step"] == 2


def test_ms_ssim_loss_orders_distortions():
    torch.manual_seed(0)
    x = torch.from_numpy(smooth_image(64, 64)).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert ms_ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    small = ms_ssim_loss(x, x + 0.02 * torch.randn_like(x)).item()
    large = ms_ssim_loss(x, x + 0.2 * torch.randn_like(x)).item()
    assert 0 < small < large


@pytest.mark.parametrize("profile", ["tiny", "tiny-shuffle"])
def test_decoder_stage_keeps_the_latents(folders, tmp_path, profile):
    from rdeic_codec.networks.autoencoder import load_autoencoder, save_autoencoder

    work, out = tmp_path / "work", tmp_path / "model"
    run = dict(profile=profile, log=lambda m: None)
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), None, stages=("autoencoder",),
                 steps={"autoencoder": 1}, **run)
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), None, stages=("decoder",),
                 steps={"decoder": 3}, **run)
    before = load_autoencoder(str(work / "autoencoder" / "vae")).state_dict()
    refined = load_autoencoder(str(work / "decoder" / "vae"))
    after = refined.state_dict()
    assert before.keys() == after.keys()
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv.", "encoder_out."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    # The model written afterwards decodes with the refined decoder (marked here so that it is unmistakable).
    last_conv = [m for m in refined.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last_conv.bias.fill_(0.5)
    save_autoencoder(refined, str(work / "decoder" / "vae"))
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), str(out),
                 stages=("denoiser", "compression", "stage1"), steps={"denoiser": 1, "compression": 1, "stage1": 1},
                 **run)
    written = [m for m in load_model(str(out)).vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert torch.all(written.bias == 0.5)


def test_a_stage_run_alone_starts_from_the_stage_before(folders, first_stages, tmp_path):
    from rdeic_codec.model import RDEICModel
    from rdeic_codec.profiles import get_profile

    work = tmp_path / "work"
    shutil.copytree(first_stages / "work", work)
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), None, stages=("finetune",),
                 steps={"finetune": 1}, profile="tiny", log=lambda m: None)
    model = RDEICModel(get_profile("tiny"))
    load_checkpoint(str(work / "stage1"), {"compression": model.compression, "control": model.control})
    stage1 = {**model.compression.state_dict(), **{f"c.{k}": v for k, v in model.control.state_dict().items()}}
    load_checkpoint(str(work / "finetune"), {"compression": model.compression, "control": model.control})
    tuned = {**model.compression.state_dict(), **{f"c.{k}": v for k, v in model.control.state_dict().items()}}
    # One fine-tuning step at the warm-up learning rate moves weights by about 1e-6, not to a fresh init.
    for k, v in stage1.items():
        if v.is_floating_point():
            torch.testing.assert_close(tuned[k], v, atol=1e-3, rtol=0), k


def test_photo_crops_lie_under_their_latent_crops(folders, tmp_path):
    import copy

    from rdeic_codec.networks.autoencoder import load_autoencoder
    from rdeic_codec.training.data import list_images, load_rgb
    from rdeic_codec.training.latent_cache import LatentCrops, LatentPhotoCrops, build_cache

    work = tmp_path / "work"
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), None, profile="tiny",
                 stages=("autoencoder",), steps={"autoencoder": 1}, log=lambda m: None)
    cache = str(tmp_path / "cache.safetensors")
    build_cache(load_autoencoder(str(work / "autoencoder" / "vae")).eval(), str(folders / "train"), cache,
                log=lambda m: None)
    crops = LatentPhotoCrops(cache, str(folders / "train"), 8, seed=3, features=False)
    draws = copy.deepcopy(crops.rng)
    z, feat, photos = crops.batch(6)
    assert feat is None and photos.shape == (6, 3, 64, 64) and photos.min() >= -1 and photos.max() <= 1
    crops.rng = draws
    indices = [int(i) for i in crops.rng.integers(0, len(crops), 6)]
    paths = list_images(str(folders / "train"))
    mirrored = 0
    for k, i in enumerate(indices):
        y, x, m = crops._draw_window(i)
        mirrored += m
        photo = load_rgb(paths[int(crops.keys[i])])  # 256×256: the cache keeps it whole
        photo = photo[:, ::-1] if m else photo
        expected = torch.from_numpy(photo[8 * y : 8 * y + 64, 8 * x : 8 * x + 64].copy()).permute(2, 0, 1).float()
        assert torch.equal(photos[k], expected / 127.5 - 1)
        assert torch.equal(z[k], crops.latents[i][m][:, y : y + 8, x : x + 8])
    assert 0 < mirrored < 6  # both the photos and their mirror images came up
    # The latents are those LatentCrops gives for the same draws.
    plain = LatentCrops(cache, 8, seed=3, features=False)
    assert torch.equal(plain.batch(6)[0], z)
    # A cache from other photos is refused.
    with pytest.raises(ValueError, match="was not built from"):
        LatentPhotoCrops(cache, str(folders / "valid"), 8)


def test_the_decoder_zc_stage_changes_the_decoder_only(folders, tmp_path):
    """The stage refines what turns z_c into pixels and nothing else: the files' payloads stay byte for byte."""
    from conftest import make_tiny_model
    from rdeic_codec.container import unpack
    from rdeic_codec.model import save_model

    run = dict(profile="tiny-hyperprior", log=lambda m: None)
    # A finished model as rdeic train writes one (its stages and rate calibration in the config).
    first = tmp_path / "first"
    stages = ("autoencoder", "denoiser", "compression", "stage1", "finetune")
    made = load_model(make_tiny_model(str(tmp_path / "made"), profile="tiny-hyperprior"))
    save_model(made, str(first), name="first", extra={"training": {
        "stages": list(stages), "steps": {s: 1 for s in stages}, "rate_calibration": {"photos": 24}}})
    work, refined = tmp_path / "work2", tmp_path / "refined"
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), str(refined), stages=("decoder_zc",),
                 steps={"decoder_zc": 3}, start_from=str(first), **run)
    a, b = load_model(str(first)), load_model(str(refined))
    assert b.config["training"]["stages"][-1] == "decoder_zc" and b.config["training"]["steps"]["decoder_zc"] == 3
    for part in ("unet", "compression", "control"):
        for k, v in a.component(part).state_dict().items():
            assert torch.equal(v, b.component(part).state_dict()[k]), (part, k)
    va, vb = a.vae.state_dict(), b.vae.state_dict()
    changed = {k for k in va if not torch.equal(va[k], vb[k])}
    assert changed and all(k.startswith("decoder.") or k.startswith("post_quant_conv.") for k in changed)
    image = smooth_image(64, 64)
    head_a, payload_a = unpack(codec.encode(a, image, 1.0).data)
    head_b, payload_b = unpack(codec.encode(b, image, 1.0).data)
    assert payload_a == payload_b and head_a.lam == head_b.lam  # the same bits; only the model id differs
    assert b.config["training"]["rate_calibration"] == a.config["training"]["rate_calibration"]
    assert not np.array_equal(codec.decode(a, codec.encode(a, image, 1.0).data, steps=0),
                              codec.decode(b, codec.encode(b, image, 1.0).data, steps=0))
    log = open(work / "decoder_zc" / "valid.log").read().splitlines()
    assert len(log) == 2 and "λ=0.1: psnr_zc" in log[-1]


def test_validation_rate_is_the_size_of_real_files(tiny_model):
    from rdeic_codec.training.file_rate import file_bpp

    images = [smooth_image(64, 64, seed=1), smooth_image(64, 128, seed=2)]
    expected = np.mean([len(codec.encode(tiny_model, im, 1.0).data) * 8 / im[..., 0].size for im in images])
    assert file_bpp(tiny_model, images, 1.0) == pytest.approx(expected)
    # The float64 copy the coder uses is rebuilt from the weights as they are now, not kept from before.
    assert tiny_model._entropy_path is None


def test_training_can_start_from_a_finished_model(folders, first_stages, tmp_path):
    run = dict(profile="tiny", log=lambda m: None)
    first = first_stages / "model"
    work, refined = tmp_path / "work2", tmp_path / "refined"
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), str(refined), stages=("finetune",),
                 steps={"finetune": 1}, start_from=str(first), **run)
    for stage in ("autoencoder", "denoiser", "compression", "stage1", "finetune"):
        assert os.path.exists(work / stage / "done"), stage
    a, b = load_model(str(first)), load_model(str(refined))
    # The frozen parts come through unchanged (the learned context included); fine-tuning starts from the
    # model's compression and control modules, not from a fresh initialisation.
    for part in ("vae", "unet"):
        for k, v in a.component(part).state_dict().items():
            assert torch.equal(v, b.component(part).state_dict()[k]), (part, k)
    assert a.unet.context.abs().sum() > 0
    # Parameters only (the codebook's usage statistics move with every batch), and of the codebook only the
    # codewords in use: training re-seeds the unused ones.
    used = a.compression.quantize.embed_prob > 0.03 / a.compression.quantize.embed_prob.numel()
    assert used.any()
    for part in ("compression", "control"):
        tuned = dict(b.component(part).named_parameters())
        for k, v in a.component(part).named_parameters():
            if k == "quantize.embedding.weight":
                v, tuned[k] = v[used], tuned[k][used]
            torch.testing.assert_close(tuned[k], v, atol=1e-3, rtol=0), (part, k)
    assert b.config["training"]["stages"][-1] == "finetune" and a.model_id != b.model_id
    assert b.config["training"]["steps"] == {**a.config["training"]["steps"], "finetune": 1}
    image = smooth_image(64, 64)
    assert codec.decode(b, codec.encode(b, image, 1.0).data, steps=2).shape == image.shape
    # `--from M --stages denoiser --steps denoiser=3`: the seeded stage (weights, no optimiser state) trains
    # on from the model's one iteration instead of counting as finished.
    work3 = tmp_path / "work3"
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work3), None, stages=("denoiser",),
                 steps={"denoiser": 3}, start_from=str(first), **run)
    from rdeic_codec.training.stage_denoiser import BaseDenoiser

    assert load_checkpoint(str(work3 / "denoiser"), {"denoiser": BaseDenoiser(a.config)})["step"] == 3


@pytest.mark.parametrize("profile", ["tiny", "tiny-shuffle"])
def test_zc_pixel_distortion_measures_the_decoded_image(profile):
    from rdeic_codec.model import RDEICModel
    from rdeic_codec.profiles import get_profile
    from rdeic_codec.training.stage_rdeic import zc_distortion

    torch.manual_seed(0)
    model = RDEICModel(get_profile(profile)).eval()
    ch = model.config["unet"]["in_channels"]
    z = torch.randn(2, ch, 24, 24)
    z_c = (z + 0.3 * torch.randn_like(z)).requires_grad_(True)
    latent_only, logs = zc_distortion(model, z_c, z)
    assert "psnr_zc" not in logs  # the paper's term, unless a profile asks for pixels
    assert torch.allclose(latent_only, (z_c - z).pow(2).flatten(1).mean(1))
    model.compression.cfg.update(zc_pixel_weight=1.0, zc_latent_weight=0.0)
    same, _ = zc_distortion(model, z.clone(), z, torch.Generator().manual_seed(0))
    assert same.abs().max().item() == 0.0
    dist, logs = zc_distortion(model, z_c, z, torch.Generator().manual_seed(0))
    assert (dist > 0).all() and 0 < logs["psnr_zc"] < 100
    dist.sum().backward()  # the gradient reaches z_c through the frozen decoder
    assert z_c.grad.abs().sum().item() > 0
    model.compression.cfg.update(zc_msssim_weight=1.0)
    with_msssim, logs = zc_distortion(model, z_c, z, torch.Generator().manual_seed(0))
    assert (with_msssim > dist).all() and 0 < logs["msssim_zc"] < 1
    # A profile may fade the MS-SSIM term out with λ: full at the low rates, none at the high ones.
    model.compression.cfg.update(zc_msssim_fade=[0.15, 0.5])
    lam = torch.tensor([0.1, 2.0])
    faded, _ = zc_distortion(model, z_c, z, torch.Generator().manual_seed(0), lam)
    assert torch.allclose(faded, torch.stack([with_msssim[0], dist[1]]))


def test_the_ms_ssim_weight_fades_linearly_in_log_lambda():
    from rdeic_codec.training.stage_rdeic import zc_msssim_weight

    cfg = {"zc_msssim_weight": 0.15, "zc_msssim_fade": [0.15, 0.5]}
    lam = torch.tensor([0.05, 0.15, (0.15 * 0.5) ** 0.5, 0.5, 2.0])
    assert torch.allclose(zc_msssim_weight(cfg, lam), torch.tensor([0.15, 0.15, 0.075, 0.0, 0.0]), atol=1e-6)
    assert zc_msssim_weight({"zc_msssim_weight": 0.15}, lam) == 0.15  # no fade: flat, as before


def test_an_anchored_stage_1_starts_at_z_c_and_trains_its_head(folders, tmp_path):
    """Stage 1 of an anchored control module: before training, its prediction at the relay start is z_c
    exactly (so its error equals z_c's), and stages 1 and 2 move the zero-initialised head."""
    from rdeic_codec.model import RDEICModel
    from rdeic_codec.profiles import get_profile
    from rdeic_codec.sampler import alphas_cumprod
    from rdeic_codec.training.stage_rdeic import stage1_loss

    torch.manual_seed(0)
    model = RDEICModel(get_profile("tiny-anchored")).eval()
    ch = model.config["unet"]["in_channels"]
    z = torch.randn(2, ch, 16, 16)
    cfg = model.config["diffusion"]
    ab = torch.tensor(alphas_cumprod(cfg), dtype=torch.float32)
    _, logs = stage1_loss(model, z, z, torch.tensor([0.1, 2.0]), torch.tensor([cfg["relay_start"]] * 2), ab,
                          cfg["relay_start"], torch.Generator().manual_seed(0))
    out = model.compression(z, torch.tensor([0.1, 2.0]))
    assert logs["mse_x0"] == pytest.approx((out["z_c"] - z).pow(2).mean().item(), rel=1e-6)

    work, dest = tmp_path / "work", tmp_path / "model"
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), str(dest), profile="tiny-anchored",
                 steps={name: 1 for name in pipeline.STAGES} | {"stage1": 2, "finetune": 2}, log=lambda m: None)
    trained = load_model(str(dest))
    assert trained.control.anchor_head.weight.abs().sum().item() > 0  # the written model keeps the head
    image = smooth_image(64, 64)
    assert codec.decode(trained, codec.encode(trained, image, 1.0).data, steps=2).shape == image.shape


def test_a_frozen_compression_module_costs_stage_1_no_pixel_window():
    """With the compression module frozen, z_c's distortion is a constant: stage 1 does not decode a
    pixel window for it while training, and its validation (no gradients) still reports it."""
    from rdeic_codec.model import RDEICModel
    from rdeic_codec.profiles import get_profile
    from rdeic_codec.sampler import alphas_cumprod
    from rdeic_codec.training.stage_rdeic import compression_is_frozen, stage1_loss

    torch.manual_seed(0)
    model = RDEICModel(get_profile("tiny-hyperprior")).eval()
    assert compression_is_frozen(model)
    z = torch.randn(2, model.config["unet"]["in_channels"], 16, 16)
    cfg = model.config["diffusion"]
    ab = torch.tensor(alphas_cumprod(cfg), dtype=torch.float32)
    args = (model, z, z, torch.tensor([0.1, 2.0]), torch.tensor([5, 60]), ab, cfg["relay_start"])
    loss, logs = stage1_loss(*args, torch.Generator().manual_seed(0))
    assert "psnr_zc" not in logs and loss.requires_grad
    with torch.no_grad():
        _, logs = stage1_loss(*args, torch.Generator().manual_seed(0))
    assert "psnr_zc" in logs


def test_decoder_stage_noise_reaches_half_the_batch():
    from rdeic_codec.training.stage_decoder import add_latent_noise

    z = torch.randn(6, 4, 16, 16)
    noisy = add_latent_noise(z, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(noisy[0::2], z[0::2])  # clean half: the reconstruction stays sharp
    diff = (noisy[1::2] - z[1::2]).flatten(1).std(1)
    assert (diff > 0).all() and (diff < 0.3 * 1.1).all()


def test_a_profile_sets_its_own_stage_counts(folders, tmp_path, monkeypatch):
    """A profile's ``stage_steps`` set the iterations of its stages (the small-hyperprior recipe's), and
    --steps still overrides them."""
    import json

    from rdeic_codec import profiles

    tiny = dict(profiles.PROFILES["tiny-shuffle"], stage_steps={"autoencoder": 2, "decoder": 3})
    monkeypatch.setitem(profiles.PROFILES, "tiny-shuffle", tiny)
    work = tmp_path / "work"
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), None, profile="tiny-shuffle",
                 stages=("autoencoder", "decoder"), steps={"decoder": 1}, log=lambda m: None)
    for stage, expected in (("autoencoder", 2), ("decoder", 1)):
        with open(work / stage / "state.json") as f:
            assert json.load(f)["step"] == expected, stage


def test_the_adversarial_critic_learns_to_tell_blur_from_photo_and_passes_gradients_to_the_image():
    import torch.nn.functional as F

    from rdeic_codec.training.adversarial import AdversarialTerm

    torch.manual_seed(0)
    term = AdversarialTerm(latent_channels=4, weight=0.1, lr=1e-3)
    real = torch.from_numpy(np.stack([smooth_image(64, 64, seed=s) for s in range(4)])).permute(0, 3, 1, 2)
    real = real.float() / 127.5 - 1
    blurred = F.interpolate(F.avg_pool2d(real, 4), scale_factor=4, mode="bilinear")
    z_c = torch.randn(4, 4, 8, 8)
    for _ in range(30):
        term.update(real, blurred, z_c)
    with torch.no_grad():
        assert term.critic(real, z_c).mean() > term.critic(blurred, z_c).mean()
    before = [p.grad.clone() for p in term.critic.parameters()]
    fake = blurred.clone().requires_grad_(True)
    loss = term.generator_loss(fake, z_c)
    assert loss.shape == (4,)
    loss.sum().backward()
    assert fake.grad.abs().sum() > 0  # the generator's term reaches the image ...
    assert all(torch.equal(b, p.grad) for b, p in zip(before, term.critic.parameters()))  # ... not the critic


def test_stage_2_with_the_adversarial_term_checkpoints_its_critic(folders, tmp_path, monkeypatch):
    from rdeic_codec import profiles

    anchored = dict(profiles.PROFILES["tiny-anchored"], finetune={"adversarial_weight": 0.1})
    monkeypatch.setitem(profiles.PROFILES, "tiny-anchored", anchored)
    work, dest = tmp_path / "work", tmp_path / "model"
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), str(dest), profile="tiny-anchored",
                 steps={name: 1 for name in pipeline.STAGES} | {"finetune": 2}, log=lambda m: None)
    from safetensors.torch import load_file

    keys = load_file(str(work / "finetune" / "checkpoint.safetensors")).keys()
    assert any(k.startswith("model.critic.") for k in keys)  # a resumed stage 2 finds its critic
    load_model(str(dest))


def test_the_feature_distance_is_zero_for_the_photo_grows_with_blur_and_reaches_the_image():
    import torch.nn.functional as F

    from rdeic_codec import profiles
    from rdeic_codec.networks.autoencoder import build_vae
    from rdeic_codec.training.losses import feature_distance

    torch.manual_seed(0)
    vae = build_vae(profiles.PROFILES["tiny-shuffle"]["vae"]).eval()
    vae.requires_grad_(False)
    photo = torch.from_numpy(np.stack([smooth_image(64, 64, seed=s) for s in range(2)])).permute(0, 3, 1, 2)
    texture = torch.sin(torch.arange(64.0) * 2.1).view(1, 1, 1, 64) * torch.cos(torch.arange(64.0) * 1.3).view(1, 1, 64, 1)
    photo = (photo.float() / 127.5 - 1) * 0.7 + 0.3 * texture  # fine detail for the blur to take away
    slight = 0.8 * photo + 0.2 * F.avg_pool2d(photo, 3, 1, 1)
    strong = F.interpolate(F.avg_pool2d(photo, 8), scale_factor=8, mode="bilinear")
    assert torch.allclose(feature_distance(vae, photo, photo), torch.zeros(2), atol=1e-6)
    d_slight, d_strong = feature_distance(vae, slight, photo), feature_distance(vae, strong, photo)
    assert d_slight.shape == (2,) and (d_slight > 0).all() and (d_strong > d_slight).all()
    image = strong.clone().requires_grad_(True)
    feature_distance(vae, image, photo).sum().backward()
    assert image.grad.abs().sum() > 0


def test_stage_2_from_a_model_takes_the_profiles_feature_weight(folders, tmp_path, monkeypatch):
    """Stage 2's loss settings are the profile's, also when it continues a --from model, and its
    feature term joins the loss."""
    import json

    from rdeic_codec import profiles
    from rdeic_codec.training import stage_finetune

    work, first = tmp_path / "work", tmp_path / "first"
    steps = {name: 1 for name in pipeline.STAGES}
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(work), str(first), profile="tiny-anchored",
                 steps=steps, log=lambda m: None)
    weights = []
    real_loss = stage_finetune.finetune_loss

    def spy(*args, **kwargs):
        loss, logs = real_loss(*args, **kwargs)
        weights.append((args[6] if len(args) > 6 else kwargs.get("feature_weight", 0.0), "feature" in logs))
        return loss, logs

    monkeypatch.setattr(stage_finetune, "finetune_loss", spy)
    anchored = dict(profiles.PROFILES["tiny-anchored"], finetune={"feature_weight": 0.5})
    monkeypatch.setitem(profiles.PROFILES, "tiny-anchored", anchored)
    second = tmp_path / "second"
    pipeline.run(str(folders / "train"), str(folders / "valid"), str(tmp_path / "work2"), str(second),
                 profile="tiny-anchored", start_from=str(first), stages=("finetune",), steps={"finetune": 2},
                 log=lambda m: None)
    assert (0.5, True) in weights
    with open(second / "config.json") as f:
        assert json.load(f)["finetune"] == {"feature_weight": 0.5}


def test_the_critic_cannot_be_won_by_colour():
    """It judges luma: a colour change that keeps the luma leaves its logits as they are (with RGB, the
    relay steps learned to saturate colours; docs/training.md, session 11)."""
    from rdeic_codec.networks.discriminator import PatchDiscriminator

    torch.manual_seed(0)
    critic = PatchDiscriminator(latent_channels=4).eval()  # eval: spectral norm stops its power iteration
    image, z_c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 4, 4, 4)
    recoloured = image + 0.3 * torch.tensor([0.587, -0.299, 0.0]).view(1, 3, 1, 1)  # same BT.601 luma
    with torch.no_grad():
        assert torch.allclose(critic(image, z_c), critic(recoloured, z_c), atol=1e-5)
        assert not torch.allclose(critic(image, z_c), critic(image.flip(-1), z_c), atol=1e-5)


def test_latent_crops_flip_by_encoding_the_mirror_image(folders, tmp_path):
    """A flipped crop is a window of the mirror image's latent (a flipped latent is no photo's latent:
    the encoder is not mirror-equivariant); a cache without mirror latents gives no flips."""
    from safetensors.torch import load_file, save_file

    from rdeic_codec.model import RDEICModel
    from rdeic_codec.networks.autoencoder import encode_image
    from rdeic_codec.profiles import get_profile
    from rdeic_codec.training.latent_cache import LatentCrops, build_cache

    torch.manual_seed(0)
    vae = RDEICModel(get_profile("tiny-shuffle")).vae.eval()
    path = str(tmp_path / "cache.safetensors")
    build_cache(vae, str(folders / "train"), path, log=lambda m: None)
    image = np.asarray(Image.open(folders / "train" / "0.png").convert("RGB"))
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        mirror = encode_image(vae, x.flip(-1))[0]
    crops = LatentCrops(path, 8, seed=0, features=False)
    assert crops.flips and torch.allclose(crops.latents[0][1], mirror, atol=1e-5)

    def sources(c):
        lat, _ = c.batch(24, indices=[0] * 24)
        found = set()
        for z in lat:
            for m, whole in enumerate(c.latents[0]):
                if any(torch.equal(z, whole[:, y:y + 8, x:x + 8]) for y in range(0, 25, 8) for x in range(0, 25, 8)):
                    found.add(m)
                    break
            else:
                raise AssertionError("a crop that is no window of the image's or its mirror image's latent")
        return found

    assert sources(crops) == {0, 1}
    raw = load_file(path)
    save_file({k: v for k, v in raw.items() if ".mirror." not in k}, str(tmp_path / "old.safetensors"))
    old = LatentCrops(str(tmp_path / "old.safetensors"), 8, seed=0, features=False)
    assert not old.flips and sources(old) == {0}
