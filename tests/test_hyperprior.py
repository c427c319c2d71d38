"""The hyperprior compression module (the small-hyperprior profile's): its files decode exactly, whatever thread
count or float noise the decoder sees, its training rate is what the file costs, a golden file pins its
bitstream, and `rdeic train --from` can put a new module on a finished model."""

import copy
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from rdeic_codec import codec, container
from rdeic_codec.entropy.latent_coder import GaussianModels, LatentDecoder, LatentEncoder
from rdeic_codec.entropy.tables import ScaleTable
from rdeic_codec.model import load_model
from rdeic_codec.networks.hyperprior import HyperpriorModule
from rdeic_codec.profiles import get_profile

from conftest import make_tiny_model, smooth_image

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
# The stored model, image file and ŷ of each context: "none" (the plain hyperprior), "checkerboard" and
# "space-channel".
GOLDEN = {"none": os.path.join(DATA, "golden-hyperprior"),
          "checkerboard": os.path.join(DATA, "golden-hyperprior-checkerboard"),
          "space-channel": os.path.join(DATA, "golden-hyperprior-space-channel")}
GOLDEN_LAMBDA = 0.5
# A space-channel context's slices of y: the tiny profile's 12 channels, the small profile's 96.
SLICES = {"tiny": [2, 4, 6], "small": [16, 16, 32, 32]}


def set_context(comp_cfg: dict, context: str, size: str = "tiny") -> dict:
    comp_cfg["context"] = context
    if context == "space-channel":
        comp_cfg["context_slices"] = SLICES[size]
    return comp_cfg


def scaled_init(module: nn.Module, seed: int) -> None:
    """Random weights that keep each layer's signal at its input's scale (PyTorch's default init makes
    every scale and mean of a deep random stack ~0, which would test nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype) / fan_in**0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))
        if isinstance(module, HyperpriorModule):
            module.quantize.log_scale.copy_(torch.randn(module.quantize.log_scale.shape, generator=gen))


def make_golden_model(folder: str, context: str = "none") -> str:
    """The tiny hyperprior with random weights at their input's scale; with a ``context``, its
    corrections are random too (not the zero they start training at)."""
    from rdeic_codec.model import RDEICModel, save_model

    torch.manual_seed(7)
    cfg = get_profile("tiny-hyperprior")
    set_context(cfg["compression"], context)
    model = RDEICModel(cfg)
    scaled_init(model.compression, seed=7)
    save_model(model, folder, name="golden-hyperprior")
    return folder


@pytest.fixture(scope="module", params=["none", "checkerboard", "space-channel"])
def hyper_model(tmp_path_factory, request):
    folder = make_golden_model(str(tmp_path_factory.mktemp("tiny-hyperprior")), request.param)
    return load_model(folder)


@pytest.fixture(scope="module", params=["none", "checkerboard", "space-channel"])
def small_shapes_path(request):
    """The small-hyperprior profile's module at its real shapes (96 channels of y, 64 of z), float64
    entropy path, with each context."""
    cfg = get_profile("small-hyperprior")
    set_context(cfg["compression"], request.param, "small")
    comp = HyperpriorModule(cfg["compression"]).double()
    scaled_init(comp, seed=0)
    return cfg, comp


@torch.no_grad()
def test_small_shapes_decode_exactly_across_threads_and_float_noise(small_shapes_path):
    """A 256×256 image's y (96 × 16 × 16) and z (64 × 4 × 4): a decoder on 2 threads, and one whose
    float64 parameters are off by 1e-12 (relative), decode the encoder's ẑ and ŷ exactly."""
    cfg, comp = small_shapes_path
    table = ScaleTable(cfg["entropy"])
    models = GaussianModels(table)
    gen = torch.Generator().manual_seed(1)
    y = 3 * torch.randn(1, cfg["compression"]["M"], 16, 16, generator=gen, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        z_sym = comp.quantize.indices(comp.h_a(y))
        enc = LatentEncoder(table, models)
        enc.encode_hyper(z_sym.numpy(), comp.quantize)
        y_enc = enc.encode_latent(comp.context, comp.h_s(comp.quantize.lookup(z_sym, torch.float64)), y)
        payload = enc.finish()
        assert z_sym.abs().max() > 1 and len(payload) > 1000  # non-trivial symbols of several widths

        noisy = copy.deepcopy(comp)
        for p in noisy.parameters():
            p.mul_(1 + 1e-12 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for n_threads, dec_comp in ((2, comp), (1, noisy)):
            torch.set_num_threads(n_threads)
            dec = LatentDecoder(payload, table, models)
            got = torch.from_numpy(dec.decode_hyper(4, 4, dec_comp.quantize))
            assert torch.equal(got, z_sym)
            hyper = dec_comp.h_s(dec_comp.quantize.lookup(got, torch.float64))
            assert torch.equal(dec.decode_latent(dec_comp.context, hyper), y_enc)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def test_training_rate_is_what_the_file_costs(hyper_model):
    """The rate term training minimises (rounded residuals, y and z) is the size of the real file, to
    within the mean grid, the scale table and the coder's own overhead."""
    image = smooth_image(256, 256, seed=4)
    result = codec.encode(hyper_model, image, GOLDEN_LAMBDA)
    _, payload = container.unpack(result.data)
    from rdeic_codec.networks.autoencoder import encoder_feature, latent_from_feature

    x = codec._to_tensor(image, "cpu")
    latent = latent_from_feature(hyper_model.vae, encoder_feature(hyper_model.vae, x))  # input: "latent"
    out = hyper_model.compression(latent, torch.tensor([GOLDEN_LAMBDA]))
    bits = float(out["bits"][0])
    assert bits > 2000
    assert 8 * len(payload) == pytest.approx(bits, rel=0.05)


@torch.no_grad()
def test_files_decode_to_the_same_pixels_and_more_lambda_more_bytes(hyper_model):
    image = smooth_image(100, 130, seed=2)
    sizes = [len(codec.encode(hyper_model, image, lam).data) for lam in (0.1, 2.0)]
    data = codec.encode(hyper_model, image, 1.0).data
    a, b = (codec.decode(hyper_model, data, steps=2) for _ in range(2))
    assert a.shape == image.shape and np.array_equal(a, b)
    assert sizes[0] < sizes[1]


def _golden_inputs():
    return smooth_image(96, 128, seed=11)


@torch.no_grad()
@pytest.mark.parametrize("context", ["none", "checkerboard", "space-channel"])
def test_golden_file_pins_the_bitstream(context):
    """A stored tiny hyperprior model codes a stored image to the stored bytes, and those bytes decode to
    the stored ŷ exactly: a change of the bitstream (coder, tables, hyper latent, context, walk order)
    fails here. Regenerate only on purpose: ``python tests/test_hyperprior.py --regenerate CONTEXT``."""
    golden_dir = GOLDEN[context]
    model = load_model(os.path.join(golden_dir, "model"))
    assert model.compression.cfg.get("context", "none") == context
    with open(os.path.join(golden_dir, "image.rdc"), "rb") as f:
        golden = f.read()
    assert codec.encode(model, _golden_inputs(), GOLDEN_LAMBDA).data == golden
    header, payload = container.unpack(golden)
    y_hat, _ = codec.decode_latent_code(model, header, payload)
    assert torch.equal(y_hat.double(), torch.from_numpy(np.load(os.path.join(golden_dir, "y_hat.npy"))))


def _photo_folders(data, valid: int):
    """``data``/train (2 photos) and ``data``/valid (``valid`` photos) of smooth 256×256 images."""
    from PIL import Image

    for split, n in (("train", 2), ("valid", valid)):
        os.makedirs(data / split)
        for i in range(n):
            Image.fromarray(smooth_image(256, 256, seed=i + 5 * n)).save(data / split / f"{i}.png")
    return data


def test_a_new_compression_module_goes_on_a_finished_model(tmp_path):
    """`rdeic train --from MODEL --stages compression,...`: the model's autoencoder and denoiser carry
    over, the profile's compression design is trained afresh, and the written model codes files."""
    from rdeic_codec.training import pipeline

    data = _photo_folders(tmp_path / "data", valid=2)
    first = make_tiny_model(str(tmp_path / "first"), profile="tiny-shuffle")
    out = tmp_path / "new"
    pipeline.run(str(data / "train"), str(data / "valid"), str(tmp_path / "work"), str(out),
                 profile="tiny-hyperprior", stages=("compression", "stage1", "finetune"),
                 steps={"compression": 2, "stage1": 2, "finetune": 1}, start_from=first, log=lambda m: None)
    a, b = load_model(first), load_model(str(out))
    assert b.config["compression"]["type"] == "hyperprior" and isinstance(b.compression, HyperpriorModule)
    assert b.config["training"]["rate_calibration"]["photos"] == 2  # the written model's λ range was measured
    for part in ("vae", "unet"):
        for k, v in a.component(part).state_dict().items():
            assert torch.equal(v, b.component(part).state_dict()[k]), (part, k)
    # Stages 1 and 2 train the control module alone: the compression module is the compression stage's.
    from rdeic_codec.training.checkpoint import load_checkpoint

    pretrained = HyperpriorModule(b.config["compression"])
    load_checkpoint(str(tmp_path / "work" / "compression"), {"compression": pretrained})
    for k, v in pretrained.state_dict().items():
        if k in ("log_gain", "log_inv_gain"):  # the rate calibration may resample these
            continue
        torch.testing.assert_close(b.compression.state_dict()[k], v, atol=1e-3, rtol=1e-3)  # float16 storage
    assert any(v.abs().sum() > 0 for k, v in b.control.state_dict().items() if "zero" in k)
    image = smooth_image(64, 64)
    assert codec.decode(b, codec.encode(b, image, 1.0).data, steps=2).shape == image.shape

    # `--from NEW --stages compression --steps compression=4`, past the model's 2: the model's own module
    # trains on from its weights (not afresh), only the profile's continue_parts (g_s, its output layer and
    # the context: y and the rates stay), and its control module is the one it had.
    on = tmp_path / "on"
    pipeline.run(str(data / "train"), str(data / "valid"), str(tmp_path / "work-on"), str(on),
                 profile="tiny-hyperprior", stages=("compression",), steps={"compression": 4},
                 start_from=str(out), log=lambda m: None)
    c = load_model(str(on))
    assert c.config["training"]["steps"]["compression"] == 4
    assert c.config["training"]["from_model"] == b.config["model_id"]
    continued = HyperpriorModule(b.config["compression"])
    assert load_checkpoint(str(tmp_path / "work-on" / "compression"), {"compression": continued})["step"] == 4
    # Its learning curve starts where the model's stage ended, for the continuation to be compared against.
    log = open(tmp_path / "work-on" / "compression" / "valid.log").read().splitlines()
    assert [line.split(" valid ")[0] for line in log] == ["step 2", "step 4"]
    moved = 0.0
    for k, v in b.compression.named_parameters():
        new = dict(continued.named_parameters())[k]
        if k.split(".")[0] in ("g_s", "out", "context"):
            torch.testing.assert_close(new, v.float(), atol=2e-3, rtol=2e-3)  # two small steps from b's weights
            moved = max(moved, (new - v.float()).abs().max().item())
        else:  # g_a, h_a, h_s, the hyper latent's scales and the gains (the written model recalibrates these)
            assert torch.equal(new, v.float()), k
    assert moved > 0
    # The written module is the continued one, not the copy of b's that the seeded stage 1 holds.
    written = dict(c.compression.named_parameters())
    assert any(not torch.equal(written[k], v) for k, v in b.compression.named_parameters() if "gain" not in k)
    for k, v in b.control.state_dict().items():
        assert torch.equal(v, c.control.state_dict()[k]), k
    assert codec.decode(c, codec.encode(c, image, 1.0).data, steps=2).shape == image.shape


@torch.no_grad()
def test_rate_calibration_maps_the_lambda_range_onto_the_target_rates(tmp_path):
    """Both ends of the λ range are resampled onto the target rates on the calibration photos, where the
    trained range reaches them; an end whose target is out of reach stays; rates still rise."""
    from rdeic_codec.training.rate_calibration import calibrate_rates, measure_rates

    model = load_model(make_golden_model(str(tmp_path / "m")))
    photos = [smooth_image(128, 160, seed=s) for s in (21, 22)]
    lo, hi = model.compression.lambda_range
    before = measure_rates(model, photos, np.array([lo, 1.0, hi]))
    assert before[0] < before[1] < before[2]
    low, high = before[0] * 1.3, float(np.sqrt(before[0] * before[2]))
    report = calibrate_rates(model, photos, low_bpp=low, high_bpp=high, points=9, log=lambda m: None)
    after = measure_rates(model, photos, np.array([lo, 1.0, hi]))
    assert after[0] == pytest.approx(low, rel=0.15) and after[2] == pytest.approx(high, rel=0.15)
    assert after[0] < after[1] < after[2] and report["bpp_after"][1] == pytest.approx(after[2])
    # A target beyond the trained range leaves that end: only the high end moves here.
    model = load_model(make_golden_model(str(tmp_path / "m2")))
    calibrate_rates(model, photos, low_bpp=before[0] / 3, high_bpp=high, points=9, log=lambda m: None)
    assert measure_rates(model, photos, np.array([lo]))[0] == pytest.approx(before[0], rel=1e-6)
    # With a reach, the high end goes past the trained λ (the gains extrapolated) to a rate the trained range
    # does not make; the low end, reachable inside it, lands where it did without.
    model = load_model(make_golden_model(str(tmp_path / "m3")))
    beyond = before[2] * 1.1
    report = calibrate_rates(model, photos, low_bpp=low, high_bpp=beyond, points=9, reach=2.0, log=lambda m: None)
    assert report["old_lambda_range"][1] > hi and report["reach"] == 2.0
    after = measure_rates(model, photos, np.array([lo, 1.0, hi]))
    assert after[0] == pytest.approx(low, rel=0.15) and after[2] == pytest.approx(beyond, rel=0.05)
    assert after[0] < after[1] < after[2]


@torch.no_grad()
def test_a_calibrated_model_is_widened_back_to_its_trained_range(tmp_path):
    """A model calibrated once, whose rates then must rise (a context made its files smaller): with its
    earlier calibration, the high end reaches a rate the narrowed table could not, and the λ chosen (as
    trained λ) agree with calibrating the uncalibrated model directly."""
    from rdeic_codec.training.rate_calibration import calibrate_rates, measure_rates

    photos = [smooth_image(128, 160, seed=s) for s in (21, 22)]
    model = load_model(make_golden_model(str(tmp_path / "m")))
    lo, hi = model.compression.lambda_range
    before = measure_rates(model, photos, np.array([lo, hi]))
    low, mid, high = before[0] * 1.3, float(np.sqrt(before[0] * before[1])), before[1] * 0.8
    first = calibrate_rates(model, photos, low_bpp=low, high_bpp=mid, points=9, log=lambda m: None)
    again = calibrate_rates(model, photos, low_bpp=low, high_bpp=high, points=9, previous=first, log=lambda m: None)
    assert again["widened_from"] == first["old_lambda_range"]
    assert measure_rates(model, photos, np.array([hi]))[0] == pytest.approx(high, rel=0.15)
    direct = calibrate_rates(load_model(make_golden_model(str(tmp_path / "m2"))), photos, low_bpp=low,
                             high_bpp=high, points=9, log=lambda m: None)
    assert again["old_lambda_range"] == pytest.approx(direct["old_lambda_range"], rel=0.1)


@pytest.mark.parametrize("context", ["checkerboard", "space-channel"])
def test_a_context_learns_to_save_bits(tmp_path, context):
    """The context stage's loss, on one batch of a plain module's y with a new (zero) context: the first
    evaluation costs what the plain module's file costs, and after some steps on the rate alone the
    rounded rate (what the coder writes) is lower, with y and ẑ untouched."""
    from rdeic_codec.training.stage_context import context_loss

    plain = load_model(make_golden_model(str(tmp_path / "plain"), "none"))
    cfg = copy.deepcopy(plain.config)
    set_context(cfg["compression"], context)
    from rdeic_codec.model import RDEICModel

    model = RDEICModel(cfg)
    model.load_state_dict(plain.state_dict())  # the context's pre-hook: a plain module's weights, no context
    model.requires_grad_(False)
    z = torch.randn(4, cfg["compression"]["feature_channels"], 32, 32, generator=torch.Generator().manual_seed(0))
    lam = torch.tensor([0.1, 0.3, 1.0, 2.0])
    with torch.no_grad():
        start = context_loss(model, None, z, lam, rounded=True)[0].item()
        assert start == pytest.approx(context_loss(plain, None, z, lam, rounded=True)[0].item())
    params = list(model.compression.context.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss, _ = context_loss(model, None, z, lam, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert context_loss(model, None, z, lam, rounded=True)[0].item() < 0.97 * start


@torch.no_grad()
def test_a_space_channel_context_replaces_a_checkerboard_one(tmp_path):
    """Weights of a module with a trained checkerboard context load into one with a new space-channel
    context (`rdeic train --from` such a model, --stages context): the old context is dropped and the new
    one starts as none, so y is coded as by the plain module."""
    from rdeic_codec.model import RDEICModel

    board = load_model(make_golden_model(str(tmp_path / "board"), "checkerboard"))
    weights = board.state_dict()
    models = {}
    for context in ("space-channel", "none"):
        cfg = copy.deepcopy(board.config)
        set_context(cfg["compression"], context)
        models[context] = RDEICModel(cfg)
        models[context].load_state_dict(weights if context != "none" else
                                        {k: v for k, v in weights.items() if ".context." not in k})
    gen = torch.Generator().manual_seed(3)
    y = 3 * torch.randn(2, 12, 8, 8, generator=gen)
    hyper = torch.randn(2, 24, 8, 8, generator=gen)
    new, plain = (models[c].compression.y_parameters(y, hyper) for c in ("space-channel", "none"))
    assert all(torch.equal(a, b) for a, b in zip(new, plain))
    assert not torch.equal(board.compression.y_parameters(y, hyper)[1], plain[1])  # the old context did act


@torch.no_grad()
def test_reordering_y_changes_only_the_channel_order(tmp_path):
    """`context_order` "rate" puts y's costliest channels first: the module makes the same z_c at the
    same rate, with y's channels permuted."""
    model = load_model(make_golden_model(str(tmp_path / "m"), "none"))
    comp = model.compression
    latent = torch.randn(2, comp.cfg["feature_channels"], 16, 16, generator=torch.Generator().manual_seed(5))
    lam = torch.tensor([0.2, 1.5])
    before, y_before = comp(latent, lam), comp.hyper_analysis(latent, lam)[0]
    order = torch.randperm(comp.cfg["M"], generator=torch.Generator().manual_seed(6))
    comp.reorder_y(order)
    after, y_after = comp(latent, lam), comp.hyper_analysis(latent, lam)[0]
    torch.testing.assert_close(y_after, y_before[:, order])
    torch.testing.assert_close(after["z_c"], before["z_c"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after["bits"], before["bits"], rtol=1e-5, atol=1e-2)


def test_the_context_stage_goes_on_a_finished_plain_model(tmp_path):
    """`rdeic train --from MODEL --stages context`: only the new context trains, and every other weight
    comes through unchanged but the λ gains, which the rate calibration takes from the model's trained
    range again (the context lowered the rates); the written model codes files."""
    from rdeic_codec.model import save_model
    from rdeic_codec.training import pipeline

    data = _photo_folders(tmp_path / "data", valid=1)
    plain = load_model(make_golden_model(str(tmp_path / "made"), "none"))
    first = tmp_path / "first"
    stages = ("autoencoder", "denoiser", "compression", "stage1", "finetune")
    save_model(plain, str(first), name="first", extra={"training": {
        "stages": list(stages), "steps": {s: 1 for s in stages},
        "rate_calibration": {"photos": 24, "old_lambda_range": [0.2, 1.0]}}})
    out, work = tmp_path / "new", tmp_path / "work"
    pipeline.run(str(data / "train"), str(data / "valid"), str(work), str(out), profile="tiny-hyperprior",
                 stages=("context",), steps={"context": 3}, start_from=str(first), log=lambda m: None)
    a, b = load_model(str(first)), load_model(str(out))
    assert b.config["compression"]["context"] == "space-channel" and b.config["training"]["stages"][-1] == "context"
    # The profile's context_order "rate": y's channels were put in another order, then the context learned.
    # Undone, every weight but the gains' is the first model's.
    wa, wb = a.compression.g_a[-1].weight, b.compression.g_a[-1].weight
    order = torch.tensor([next(j for j in range(len(wa)) if torch.equal(wb[k], wa[j])) for k in range(len(wb))])
    assert sorted(order.tolist()) == list(range(12)) and order.tolist() != list(range(12))
    b.compression.reorder_y(torch.argsort(order))
    for part in ("vae", "unet", "control", "compression"):
        for k, v in a.component(part).state_dict().items():
            if k not in ("log_gain", "log_inv_gain"):
                assert torch.equal(v, b.component(part).state_dict()[k]), (part, k)
    assert b.compression.context.nonanchor_correction[0][-1].weight.abs().sum() > 0
    assert b.config["training"]["rate_calibration"]["widened_from"] == [0.2, 1.0]
    assert b.config["training"]["from_model"] == a.config["model_id"]
    assert "λ=2.0: bpp_rounded" in open(work / "context" / "valid.log").read()
    image = smooth_image(64, 64)
    assert codec.decode(b, codec.encode(b, image, 1.0).data, steps=2).shape == image.shape


def test_the_context_after_the_module_one_command(tmp_path, monkeypatch):
    """A profile with ``"context_training": "after"`` trains its context as the shipped models got theirs,
    in one command: the compression stage with the context held at its no-op start, the context stage on
    the finished module, the synthesis stage (g_s, its output layer and the context) on from there, then
    stages 1 and 2 on that module."""
    from rdeic_codec import profiles
    from rdeic_codec.training import pipeline
    from rdeic_codec.training.checkpoint import load_checkpoint

    staged = profiles.get_profile("tiny-hyperprior")
    staged["compression"]["context_training"] = "after"
    monkeypatch.setitem(profiles.PROFILES, "tiny-staged", staged)
    data = _photo_folders(tmp_path / "data", valid=2)
    first = make_tiny_model(str(tmp_path / "first"), profile="tiny-shuffle")
    work, out = tmp_path / "work", tmp_path / "new"
    steps = {"compression": 2, "context": 2, "synthesis": 4, "stage1": 2, "finetune": 1}
    pipeline.run(str(data / "train"), str(data / "valid"), str(work), str(out), profile="tiny-staged",
                 stages=("compression", "stage1", "finetune"), steps=steps, start_from=first, log=lambda m: None)
    assert open(work / "synthesis" / "valid.log").read().startswith("step 2 valid ")  # on from compression's 2

    def module(stage):
        m = HyperpriorModule(staged["compression"])
        assert load_checkpoint(str(work / stage), {"compression": m})["step"] == steps[stage]
        return m

    def last_layers(m):  # every correction of the context starts at zero there: a context that changes nothing
        return [p for net in m.context.corrections() for p in net[-1].parameters()]

    compressed, contexted = module("compression"), module("context")
    # The compression stage left the context as it starts ...
    assert all(p.abs().sum() == 0 for p in last_layers(compressed))
    # ... and the context stage trained it.
    assert any(p.abs().sum() > 0 for p in last_layers(contexted))
    contexted, synthesised = dict(contexted.named_parameters()), dict(module("synthesis").named_parameters())
    # ... and the synthesis stage trained the profile's continue_parts alone.
    parts = tuple(staged["compression"]["continue_parts"])
    assert any(not torch.equal(synthesised[k], contexted[k]) for k in synthesised if k.startswith(parts))
    assert all(torch.equal(synthesised[k], contexted[k]) for k in synthesised if not k.startswith(parts)), \
        [k for k in synthesised if not k.startswith(parts) and not torch.equal(synthesised[k], contexted[k])]
    # Stages 1 and 2 ran on that module, and the written model is it (the gains recalibrated).
    b = load_model(str(out))
    assert {"compression", "context", "synthesis", "stage1", "finetune"} <= set(b.config["training"]["stages"])
    assert b.config["training"]["steps"]["synthesis"] == 4
    for k, v in synthesised.items():
        if k not in ("log_gain", "log_inv_gain"):
            torch.testing.assert_close(dict(b.compression.named_parameters())[k].float(), v, atol=1e-3, rtol=1e-3)
    image = smooth_image(64, 64)
    assert codec.decode(b, codec.encode(b, image, 1.0).data, steps=2).shape == image.shape


def test_continue_parts_name_the_gains_apart_from_g_a():
    # A continuation may train g_a without the per-λ gains, or the gains without g_a: "gains" stands for
    # the two gain tensors, which belong to the module itself rather than to a submodule.
    from rdeic_codec.training.stage_rdeic import part_parameters

    comp = HyperpriorModule(get_profile("tiny-hyperprior")["compression"])
    gains = part_parameters(comp, "gains")
    assert [p.shape for p in gains] == [comp.log_gain.shape, comp.log_inv_gain.shape]
    assert gains[0] is comp.log_gain and gains[1] is comp.log_inv_gain
    g_a = part_parameters(comp, "g_a")
    assert len(g_a) == len(list(comp.g_a.parameters())) and not any(p is comp.log_gain for p in g_a)
    with pytest.raises(AttributeError):
        part_parameters(comp, "no_such_part")


def _regenerate(context: str) -> None:
    import shutil

    golden_dir = GOLDEN[context]
    shutil.rmtree(golden_dir, ignore_errors=True)
    model = load_model(make_golden_model(os.path.join(golden_dir, "model"), context))
    data = codec.encode(model, _golden_inputs(), GOLDEN_LAMBDA).data
    with open(os.path.join(golden_dir, "image.rdc"), "wb") as f:
        f.write(data)
    header, payload = container.unpack(data)
    y_hat, _ = codec.decode_latent_code(model, header, payload)
    np.save(os.path.join(golden_dir, "y_hat.npy"), y_hat.double().numpy())
    print(f"wrote {golden_dir}: {len(data)} bytes")


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        _regenerate(sys.argv[sys.argv.index("--regenerate") + 1])
