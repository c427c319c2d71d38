"""Entropy coding must decode exactly whatever thread count or float noise the decoder sees."""

import copy

import numpy as np
import pytest
import torch

from rdeic_codec import codec, container
from rdeic_codec.entropy.latent_coder import GaussianModels, LatentDecoder, LatentEncoder
from rdeic_codec.entropy.tables import ScaleTable
from rdeic_codec.networks.autoencoder import encoder_feature

from conftest import smooth_image


def encoder_side(model, image, lam):
    """Run the encoder and return (file bytes, ŷ the encoder committed to)."""
    x = codec._to_tensor(codec.pad_image(image), "cpu")
    y, idx = model.compression.analyse(encoder_feature(model.vae, x), torch.tensor([lam]))
    path = model.entropy_path()
    table = ScaleTable(model.config["entropy"])
    enc = LatentEncoder(table, GaussianModels(table))
    enc.encode_indices(idx.numpy(), path["quantize"].embed_prob)
    hyper = path["h_s"](path["quantize"].lookup(idx, torch.float64))
    y_hat = enc.encode_latent(path["context"], hyper, y)
    header = container.Header(model.model_id, lam, image.shape[1], image.shape[0])
    return container.pack(header, enc.finish()), y_hat


@torch.no_grad()
def test_one_thread_encoder_two_thread_decoder(tiny_model):
    image = smooth_image(128, 192)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        data, y_enc = encoder_side(tiny_model, image, 1.0)
        torch.set_num_threads(2)
        header, payload = container.unpack(data)
        y_dec, _ = codec.decode_latent_code(tiny_model, header, payload)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y_enc, y_dec)


@torch.no_grad()
def test_decoder_parameter_noise_does_not_change_symbols(tiny_model):
    image = smooth_image(128, 128, seed=3)
    data, y_enc = encoder_side(tiny_model, image, 0.5)
    noisy = copy.copy(tiny_model)
    noisy._entropy_path = copy.deepcopy(tiny_model.entropy_path())
    gen = torch.Generator().manual_seed(0)
    for p in noisy._entropy_path.parameters():
        p.mul_(1 + 1e-12 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    header, payload = container.unpack(data)
    y_dec, _ = codec.decode_latent_code(noisy, header, payload)
    assert torch.equal(y_enc, y_dec)



@torch.no_grad()
def test_encoding_over_y_writes_the_same_file_and_leaves_y_holding_y_hat(tiny_model):
    # The encoder may build ŷ in y's own memory (encode_latent(overwrite=True)): each y value is read
    # before the ŷ at its place is written, so the file is the same.
    image = smooth_image(128, 192, seed=5)
    x = codec._to_tensor(codec.pad_image(image), "cpu")
    y, idx = tiny_model.compression.analyse(encoder_feature(tiny_model.vae, x), torch.tensor([1.0]))
    path = tiny_model.entropy_path()
    hyper = path["h_s"](path["quantize"].lookup(idx, torch.float64))
    table = ScaleTable(tiny_model.config["entropy"])
    files, hats = [], []
    for overwrite in (False, True):
        enc = LatentEncoder(table, GaussianModels(table))
        y_in = y.clone(memory_format=torch.contiguous_format)
        hats.append(enc.encode_latent(path["context"], hyper, y_in, overwrite=overwrite))
        files.append(enc.finish())
        assert (hats[-1].data_ptr() == y_in.data_ptr()) == overwrite
    assert files[0] == files[1]
    assert torch.equal(hats[0], hats[1]) and not torch.equal(hats[0], y)

def test_file_size_matches_the_model_estimate(tiny_model):
    image = smooth_image(384, 512, seed=1)
    result = codec.encode(tiny_model, image, 2.0)
    _, payload = container.unpack(result.data)
    header_bytes = len(result.data) - len(payload)
    assert result.estimated_bits > 2000  # enough bits for the 0.5% bound to mean something
    assert 8 * (len(result.data) - header_bytes) <= result.estimated_bits * 1.005 + 64
    assert 8 * len(payload) >= result.estimated_bits * 0.99


def test_scale_table_matches_the_authors():
    table = ScaleTable({"scale_min": 0.11, "scale_max": 256.0, "num_scales": 64, "mean_step_log2": -8,
                        "max_symbol": 4096})
    assert table.scales[0] == pytest.approx(0.11) and table.scales[-1] == pytest.approx(256.0)
    idx = table.scale_index(torch.tensor([0.01, 0.11, 1.0, 1000.0]))
    assert idx[0] == 0 and idx[1] == 0 and idx[-1] == 63
    assert np.all(table.snap_mean(torch.tensor([0.1234])) * 256 % 1 == 0)


def test_range_coder_roundtrip_of_symbols():
    table = ScaleTable({"scale_min": 0.11, "scale_max": 256.0, "num_scales": 64, "mean_step_log2": -8,
                        "max_symbol": 4096})
    models = GaussianModels(table)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 64, 500)
    symbols = np.rint(rng.normal(0, table.scales[idx])).astype(np.int32)
    enc = LatentEncoder(table, models)
    enc._write(symbols, idx)
    dec = LatentDecoder(enc.finish(), table, models)
    out = np.empty_like(symbols)
    for s in np.unique(idx):
        out[idx == s] = dec.coder.decode(models.models[int(s)], int((idx == s).sum()))
    assert np.array_equal(out, symbols)


ENTROPY = {"scale_min": 0.11, "scale_max": 256.0, "num_scales": 64, "mean_step_log2": -8, "max_symbol": 4096}


def compressai_build_indexes(scales: np.ndarray, table: np.ndarray, bound: float) -> np.ndarray:
    """compressai 1.2.4's GaussianConditional.build_indexes, transcribed: lower bound, then count down
    from the last entry once for every entry[:-1] that is ≥ the scale."""
    s = np.maximum(scales, bound)
    idx = np.full(s.shape, len(table) - 1)
    for entry in table[:-1]:
        idx -= (s <= entry).astype(idx.dtype)
    return idx


def test_lower_bound_ceil_is_compressais_rule():
    table = ScaleTable({**ENTROPY, "scale_rule": "lower_bound_ceil"})
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(0, 3, 2000), np.exp(rng.uniform(-4, 7, 2000)), table.scales,
                        table.scales * (1 + 1e-9), table.scales * (1 - 1e-9), [-5.0, 0.0, 0.11, 1e6]])
    got = table.scale_index(torch.from_numpy(s))
    assert np.array_equal(got, compressai_build_indexes(s, table.scales, table.scales[0]))
    # A negative output is the narrowest distribution, not the width of its magnitude.
    assert table.scale_index(torch.tensor([-5.0, 5.0])).tolist() == [0, int(np.searchsorted(table.scales, 5.0))]
    assert table.scales[table.scale_index(torch.tensor([5.0]))[0]] >= 5.0


def test_config_without_a_scale_rule_keeps_the_nearest_abs_rule():
    """Model directories written before scale_rule existed code exactly as before: nearest entry to |s|."""
    rng = np.random.default_rng(1)
    s = torch.from_numpy(np.concatenate([rng.normal(0, 3, 5000), np.exp(rng.uniform(-4, 7, 5000))]))
    old = ScaleTable(ENTROPY)
    log_step = (np.log(256.0) - np.log(0.11)) / 63
    before = np.rint((np.log(s.abs().clamp(0.11, 256.0).numpy()) - np.log(0.11)) / log_step).clip(0, 63)
    assert np.array_equal(old.scale_index(s), before.astype(np.int64))
    assert np.array_equal(ScaleTable({**ENTROPY, "scale_rule": "nearest_abs"}).scale_index(s), before)
    # The two rules differ: the authors' models must not be coded with ours, nor the other way round.
    ceil = ScaleTable({**ENTROPY, "scale_rule": "lower_bound_ceil"}).scale_index(s)
    assert (ceil != before).mean() > 0.3


def test_unknown_scale_rule_is_a_config_error(tiny_model_dir, tmp_path):
    import json
    import shutil

    from rdeic_codec.model import ModelError, compute_model_id, load_model

    folder = str(tmp_path / "m")
    shutil.copytree(tiny_model_dir, folder)
    with open(f"{folder}/config.json") as f:
        config = json.load(f)
    config["entropy"]["scale_rule"] = "nearest"
    config["model_id"] = compute_model_id(folder, config)
    with open(f"{folder}/config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ModelError, match="unknown scale_rule 'nearest'"):
        load_model(folder)


@pytest.fixture(scope="module")
def paper_entropy_path():
    """The paper profile's float64 entropy path (codebook, h_s, context networks: the shapes of the
    authors' compression module) with random weights that keep each layer's signal at its input's scale
    (PyTorch's default init would make every mean and symbol ~0)."""
    from torch import nn

    from rdeic_codec.networks.compression import CompressionModule
    from rdeic_codec.profiles import get_profile

    cfg = get_profile("paper")
    cfg["compression"]["lambdas"] = None
    gen = torch.Generator().manual_seed(0)
    comp = CompressionModule(cfg["compression"])
    path = nn.ModuleDict({"quantize": comp.quantize, "h_s": comp.h_s, "context": comp.context}).double().eval()
    with torch.no_grad():
        for m in path.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=torch.float64) / m.weight[0].numel() ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen, dtype=torch.float64))
        path["quantize"].embedding.weight.normal_(generator=gen)
    return cfg, path


@torch.no_grad()
def test_paper_shapes_decode_exactly_across_threads_and_float_noise(paper_entropy_path):
    """At the paper's shapes (256 channels in 10 slices, 512 hyper channels, a 256×256 image's 65,536
    symbols) and the paper profile's mean grid, a decoder on 2 threads, and one whose float64 parameters
    are off by 1e-12 (relative), decode the encoder's ŷ exactly. The margin (tools/mean_grid.py, same
    shapes): at the profile's 2^-16 every mean stayed ≥ 50× farther from a rounding boundary than that
    noise moved it. The test can fail: with the grid set to 2^-32 it does (at 2^-24 it still passed)."""
    cfg, path = paper_entropy_path
    table = ScaleTable(cfg["entropy"])
    models = GaussianModels(table)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg["compression"]["codebook_size"], (1, 4, 4), generator=gen)
    y = torch.randn(1, cfg["compression"]["M"], 16, 16, generator=gen, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        enc = LatentEncoder(table, models)
        enc.encode_indices(idx.numpy(), path["quantize"].embed_prob)
        y_enc = enc.encode_latent(path["context"], path["h_s"](path["quantize"].lookup(idx, torch.float64)), y)
        payload = enc.finish()
        assert len(payload) > 20000  # symbols of many widths: the grid and the scale rule are exercised

        noisy = copy.deepcopy(path)
        for p in noisy.parameters():
            p.mul_(1 + 1e-12 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for n_threads, dec_path in ((2, path), (1, noisy)):
            torch.set_num_threads(n_threads)
            dec = LatentDecoder(payload, table, models)
            got = torch.from_numpy(dec.decode_indices(idx.numel(), dec_path["quantize"].embed_prob)).view(idx.shape)
            assert torch.equal(got, idx)
            hyper = dec_path["h_s"](dec_path["quantize"].lookup(got, torch.float64))
            assert torch.equal(dec.decode_latent(dec_path["context"], hyper), y_enc)
    finally:
        torch.set_num_threads(threads)
