"""Measure what the entropy coder's mean grid and scale rule do, on a model of the paper's shapes.

The means of y's Gaussians are snapped to multiples of 2^k (``entropy.mean_step_log2``) so that float
noise in the decoder's parameter path cannot change a decoded symbol. This tool measures, for several
grids k and for the exact (unsnapped) means the authors' code uses:

* rate: payload bits, and symbols that differ from an encoding with exact means;
* quality: how far ŷ and the 2-step decoded pixels move from those of exact means (same sampler seed);
* safety: the float noise δ of the means at these shapes (1 vs 2 threads, and the parameters of the
  float64 path scaled by 1 + 1e-12·N(0,1), as tests/test_entropy.py does), the closest any mean came
  to a rounding boundary of each grid, and the expected number of symbols the noise would flip per
  symbol coded (≈ 2δ/2^k);
* the scale rule: payload bits and table entries with ``nearest_abs`` (|s|, nearest entry) against
  ``lower_bound_ceil`` (the authors' compressai rule).

The model has random weights of the paper profile's shapes (PyTorch's default initialisation, as the
authors' modules have before training; the control module's zero convs get small weights), configured
as ``rdeic convert`` configures a converted model (one λ, ``lower_bound_ceil``). It is built in memory
(about 4.1 GB) unless ``--no-decode`` leaves out the diffusion networks and pixel measurements.

    python tools/mean_grid.py [--size 256] [--image PNG] [--grids 8,12,16,20,24] [--no-decode]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rdeic_codec import codec  # noqa: E402
from rdeic_codec.entropy.latent_coder import GaussianModels, LatentEncoder  # noqa: E402
from rdeic_codec.entropy.tables import ScaleTable  # noqa: E402
from rdeic_codec.networks.autoencoder import decode_latent, encoder_feature  # noqa: E402
from rdeic_codec.networks.compression import anchor_mask  # noqa: E402
from rdeic_codec.networks.control import controlled_prediction  # noqa: E402
from rdeic_codec.profiles import get_profile  # noqa: E402
from rdeic_codec.sampler import relay_sample  # noqa: E402

LAMBDA = 2.0


class ExactTable(ScaleTable):
    """The table with the means left as they are (the authors' coder): no grid."""

    def snap_mean(self, means):
        return means.detach().double().cpu().numpy()


def build_model(decode: bool):
    from rdeic_codec.model import RDEICModel

    torch.manual_seed(0)
    config = get_profile("paper")
    config["compression"]["lambdas"] = None
    config["entropy"]["scale_rule"] = "lower_bound_ceil"
    config["lambda"] = LAMBDA
    if not decode:  # the diffusion networks are not needed: build them at the tiny profile's size
        tiny = get_profile("tiny")
        for part in ("unet", "control", "context_shape"):
            config[part] = tiny[part]
    with torch.no_grad():
        model = RDEICModel(config)
        # PyTorch's default init shrinks the signal layer by layer, so y and the means would be ~0 and
        # every symbol 0. Weights ~ N(0, 1/fan_in) and biases ~ N(0, 0.1²), as tests/test_convert.py's
        # random authors' files have, keep each path's signal at the scale of its input.
        for m in model.compression.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 1 / (m.weight[0].numel() ** 0.5))
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
        model.unet.context.normal_()
        ctrl = model.control
        for conv in list(ctrl.enc_zero_convs) + [ctrl.middle_zero_conv] + list(ctrl.dec_zero_convs):
            torch.nn.init.normal_(conv.weight, std=0.01)
    return model.eval()


def encode_y(model, image):
    x = codec._to_tensor(codec.pad_image(image), "cpu")
    with torch.no_grad():
        return model.compression.analyse(encoder_feature(model.vae, x), torch.tensor([LAMBDA]))


def code(model, entropy: dict, y, idx):
    """Encode y with this entropy config: (payload bits, symbols in coding order, scale indices, ŷ)."""
    table = (ExactTable if entropy.get("mean_step_log2") is None else ScaleTable)(
        {**entropy, "mean_step_log2": entropy.get("mean_step_log2") or 0})
    enc = LatentEncoder(table, GaussianModels(table))
    written, indices = [], []
    write = enc._write

    def record(symbols, scale_idx):
        written.append(symbols.copy())
        indices.append(scale_idx.copy())
        write(symbols, scale_idx)

    enc._write = record
    path = model.entropy_path()
    with torch.no_grad():
        enc.encode_indices(idx.numpy(), path["quantize"].embed_prob)
        hyper = path["h_s"](path["quantize"].lookup(idx, torch.float64))
        y_hat = enc.encode_latent(path["context"], hyper, y).double()  # float32 where exact
    return 8 * len(enc.finish()), np.concatenate(written), np.concatenate(indices), y_hat


def raw_params(path, idx, y_hat):
    """Every pass's unsnapped (means, scales) given the decoded ŷ (teacher-forced: all runs see the same
    inputs, so differences between runs are the parameter path's own float noise)."""
    means, scales = [], []
    with torch.no_grad():
        hyper = path["h_s"](path["quantize"].lookup(idx, torch.float64))
        context = path["context"]
        _, _, h, w = hyper.shape
        anchors = anchor_mask(h, w, dtype=torch.float64)
        is_anchor = anchors.bool()[0, 0].numpy()
        start, hats = 0, []
        for i, ch in enumerate(context.slices):
            ref = y_hat[:, start:start + ch]
            start += ch
            shared = context.slice_inputs(i, hyper, hats)
            s_a, m_a = context.anchor_params(i, shared)
            s_n, m_n = context.nonanchor_params(i, shared, ref * anchors)
            for s, m, pos in ((s_a, m_a, is_anchor), (s_n, m_n, ~is_anchor)):
                sel = np.broadcast_to(pos, (ch, h, w))
                means.append(m[0].numpy()[sel])
                scales.append(s[0].numpy()[sel])
            hats.append(ref)
    return np.concatenate(means), np.concatenate(scales)


def noisy_path(path, scale=1e-12):
    out = copy.deepcopy(path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return out


def pixels(model, y_hat, steps=2, seed=1234):
    """codec.decode's tail from ŷ: g_s → z_c → relay diffusion (fixed seed) → VAE decoder → 8 bit."""
    with torch.no_grad():
        lam = torch.tensor([LAMBDA])
        guide, z_c = model.compression.synthesise(y_hat.float(), lam)
        def model_fn(x, t):
            return controlled_prediction(model.unet, model.control, x, t, model.unet.context, guide, z_c,
                                         diffusion=model.config["diffusion"])

        latent = relay_sample(model.config["diffusion"], z_c, model_fn, steps, torch.Generator().manual_seed(seed),
                              prediction_type=model.control.prediction_type)
        return codec._to_uint8(decode_latent(model.vae, latent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="side of the square image")
    ap.add_argument("--image", help="a photo (default: a synthetic photo-like image)")
    ap.add_argument("--grids", default="8,12,16,20,24", help="k of the grids 2^-k to measure")
    ap.add_argument("--no-decode", action="store_true", help="skip the pixel measurements (no UNet)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from gpu_check import read_image

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    model = build_model(not args.no_decode)
    image = read_image(args.image, args.size, args.size)
    y, idx = encode_y(model, image)
    base = model.config["entropy"]
    grids = [int(k) for k in args.grids.split(",")]
    report = {"image": args.image or "synthetic", "size": args.size, "symbols": int(y.numel()), "grids": {}}
    print(f"model built and y computed in {time.perf_counter() - t0:.1f} s; {y.numel()} symbols, "
          f"y std {float(y.std()):.3f}", flush=True)
    report["y_std"] = round(float(y.std()), 4)

    exact_bits, exact_sym, exact_idx, exact_hat = code(model, {**base, "mean_step_log2": None}, y, idx)
    report["exact"] = {"bits": exact_bits}
    results = {}
    for k in grids:
        bits, sym, sidx, y_hat = code(model, {**base, "mean_step_log2": -k}, y, idx)
        results[k] = y_hat
        report["grids"][k] = {
            "bits": bits, "bits_vs_exact_percent": round(100 * (bits - exact_bits) / exact_bits, 4),
            "symbols_differing_from_exact": int((sym != exact_sym).sum()),
            "scale_entries_differing_from_exact": int((sidx != exact_idx).sum()),
            "max_abs_y_hat_change": float((y_hat - exact_hat).abs().max()),
        }
        print(f"2^-{k}: {report['grids'][k]}", flush=True)

    # Float noise of the means and scales at these shapes.
    path = model.entropy_path()
    ref_hat = results[grids[0]]
    m1, s1 = raw_params(path, idx, ref_hat)
    torch.set_num_threads(2)
    m2, s2 = raw_params(path, idx, ref_hat)
    torch.set_num_threads(1)
    mn, sn = raw_params(noisy_path(path), idx, ref_hat)
    noise = {"threads_1_vs_2": (m2, s2), "params_1e-12": (mn, sn)}
    report["noise"] = {}
    for name, (m, s) in noise.items():
        sigma = np.maximum(np.abs(s1), 0.11)  # relative to the coded width, not to outputs near 0
        report["noise"][name] = {"max_abs_mean_change": float(np.abs(m - m1).max()),
                                 "max_scale_change_over_sigma": float((np.abs(s - s1) / sigma).max())}
    delta = max(v["max_abs_mean_change"] for v in report["noise"].values())
    per_symbol = np.maximum(np.abs(m2 - m1), np.abs(mn - m1))  # each mean's own noise
    for name, (m, s) in noise.items():
        table = ScaleTable(base)
        report["noise"][name]["scale_entries_changed"] = int((table.scale_index(torch.from_numpy(s))
                                                              != table.scale_index(torch.from_numpy(s1))).sum())
    for k in grids:
        g = 2.0 ** -k
        frac = m1 / g - np.floor(m1 / g)
        dist = np.abs(frac - 0.5) * g  # each mean's distance to the nearest rounding boundary of the grid
        closest = float(dist.min())
        ratio = dist[per_symbol > 0] / per_symbol[per_symbol > 0]
        grid = report["grids"][k]
        grid["closest_mean_to_a_boundary"] = closest
        grid["margin_closest_over_max_noise"] = closest / delta if delta else None
        # The margin that decides: each mean's distance to a boundary over that mean's own noise.
        grid["margin_per_symbol_min"] = float(ratio.min()) if ratio.size else None
        grid["snapped_means_changed_by_noise"] = int((np.rint(m1 / g) != np.rint(m2 / g)).sum()
                                                     + (np.rint(m1 / g) != np.rint(mn / g)).sum())
        grid["expected_flips_per_symbol_at_max_noise"] = 2 * delta / g
    print(f"noise: {report['noise']}", flush=True)

    # The scale rule: the same y coded with ours (|s|, nearest) and the authors' (lower bound, ceil).
    k0 = grids[0]
    rule = {}
    for name in ("nearest_abs", "lower_bound_ceil"):
        bits, _, sidx, _ = code(model, {**base, "mean_step_log2": -k0, "scale_rule": name}, y, idx)
        rule[name] = (bits, sidx)
    report["scale_rule"] = {
        "grid": k0, "bits_nearest_abs": rule["nearest_abs"][0], "bits_lower_bound_ceil": rule["lower_bound_ceil"][0],
        "entries_differing_percent": round(100 * float((rule["nearest_abs"][1] != rule["lower_bound_ceil"][1]).mean()), 3),
        "negative_scale_outputs_percent": round(100 * float((s1 < 0).mean()), 3),
        "payload_bits_per_symbol_ceil": round(rule["lower_bound_ceil"][0] / y.numel(), 4),
    }
    print(f"scale rule: {report['scale_rule']}", flush=True)

    if not args.no_decode:
        ref = pixels(model, exact_hat)
        for k in grids:
            px = pixels(model, results[k])
            d = np.abs(px.astype(int) - ref.astype(int))
            report["grids"][k]["pixels_changed_percent"] = round(100 * float((d > 0).mean()), 3)
            report["grids"][k]["max_pixel_change"] = int(d.max())
            report["grids"][k]["mean_abs_pixel_change"] = round(float(d.mean()), 4)
            print(f"2^-{k} pixels: {d.max()} max, {(d > 0).mean():.4f} changed", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
