"""Encoder refinement (`rdeic encode --refine N`): a refined file is an ordinary file, it codes the photo
better on the loss the model was trained for, it keeps within a size target, and what cannot be refined
is refused in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rdeic_codec import codec, refine
from rdeic_codec.imageio import load_image
from rdeic_codec.training.losses import ms_ssim_loss

from conftest import ROOT, SHIPPED_MODEL, make_tiny_model, sample_photo, smooth_image

RDEIC = [sys.executable, os.path.join(ROOT, "bin", "rdeic")]


@pytest.mark.parametrize("n", [4, 8, 44, 48, 52, 96, 100, 200])
def test_windows_split_an_axis_on_multiples_of_four(n):
    spans = refine.windows(n)
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (a, b, lo, hi), nxt in zip(spans, spans[1:] + [None]):
        assert a % 4 == 0 and b % 4 == 0 and a < b
        assert lo == max(0, a - refine.HALO) and hi == min(n, b + refine.HALO)
        if nxt is not None:
            assert nxt[0] == b  # interiors tile the axis, without gaps or overlaps
    assert len(spans) == -(-n // refine.WINDOW)


def _file_loss(model, image: np.ndarray, data: bytes, lam: float) -> float:
    """What refinement lowers, measured on the real file: its bits per pixel plus 2·w(λ) times the
    distortion of z_c decoded (MSE in [−1, 1] plus the weighted 1 − MS-SSIM, whole image)."""
    decoded = codec.decode(model, data, steps=0)
    a, b = (torch.from_numpy(np.array(x, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1 for x in (decoded, image))
    distortion = (a - b).pow(2).mean() + refine.MSSSIM_WEIGHT * ms_ssim_loss(a, b).mean()
    return 8 * len(data) / (image.shape[0] * image.shape[1]) + refine.distortion_weight(model, lam) * float(distortion)


@pytest.fixture(scope="module")
def shipped_refined():
    """The shipped model, a 192×256 crop of a sample photo, and its files at λ = 0.5 plain and with 8 steps."""
    if not os.path.isdir(SHIPPED_MODEL):
        pytest.skip("the shipped model is missing")
    from rdeic_codec.model import load_model

    model = load_model(SHIPPED_MODEL)
    image = load_image(sample_photo("gb82_flowers.png")).pixels[:192, :256]
    return model, image, codec.encode(model, image, 0.5), codec.encode(model, image, 0.5, refine=8)


def test_refined_file_codes_a_photo_better_and_decodes_the_same_every_time(shipped_refined):
    model, image, plain, refined = shipped_refined
    assert refined.data != plain.data and refined.lam == plain.lam
    assert _file_loss(model, image, refined.data, 0.5) < _file_loss(model, image, plain.data, 0.5)
    # An ordinary file: the decoder neither knows nor cares that it was refined.
    first = codec.decode(model, refined.data, steps=2)
    assert np.array_equal(first, codec.decode(model, refined.data, steps=2))


def test_refining_in_windows_keeps_most_of_the_gain(shipped_refined, monkeypatch):
    model, image, plain, whole = shipped_refined
    monkeypatch.setattr(refine, "WINDOW", 8)  # the 192×256 crop in 2×2 windows of 64–128 pixels,
    monkeypatch.setattr(refine, "HALO", 4)  # whose context is cut 64 pixels beyond each interior
    windowed = codec.encode(model, image, 0.5, refine=8)
    losses = [_file_loss(model, image, r.data, 0.5) for r in (plain, whole, windowed)]
    # Measured: the windows kept 90% of the gain of refining in one piece.
    assert losses[0] - losses[2] > 0.7 * (losses[0] - losses[1]) > 0


def test_no_refinement_is_the_plain_encoder(tiny_hyperprior_model):
    image = smooth_image(64, 96)
    assert codec.encode(tiny_hyperprior_model, image, 1.0, refine=0).data == codec.encode(tiny_hyperprior_model, image, 1.0).data


def test_windowed_refinement_is_reproducible_and_decodes(tiny_hyperprior_model, monkeypatch):
    monkeypatch.setattr(refine, "WINDOW", 4)  # a 128×192 image is then 2×3 windows of 64 pixels
    monkeypatch.setattr(refine, "HALO", 4)
    image = smooth_image(128, 192, seed=3)
    first = codec.encode(tiny_hyperprior_model, image, 1.0, refine=3)
    assert first.data == codec.encode(tiny_hyperprior_model, image, 1.0, refine=3).data
    assert codec.decode(tiny_hyperprior_model, first.data, steps=1).shape == image.shape


def test_a_refined_analysis_codes_at_its_own_lambda_only(tiny_hyperprior_model):
    image = smooth_image(64, 64)
    analysis = codec.refine_analysis(tiny_hyperprior_model, image, codec.analyse_image(tiny_hyperprior_model, image),
                                     1.0, 2)
    with pytest.raises(codec.CodecError, match="refined for"):
        codec.encode_analysis(tiny_hyperprior_model, analysis, 0.5)


def test_a_vector_quantised_model_is_refused(tiny_model):
    with pytest.raises(codec.CodecError, match="Gaussian hyper latent"):
        codec.encode(tiny_model, smooth_image(64, 64), 1.0, refine=2)


def test_cli_refines_with_lambda_and_with_a_size_target(tmp_path):
    model = make_tiny_model(str(tmp_path / "model"), profile="tiny-hyperprior")
    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(64, 96)).save(src)
    ok = subprocess.run(RDEIC + ["encode", str(src), str(tmp_path / "a.rdc"), "--lambda", "1", "--refine", "2",
                                 "--model", model], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    assert b"2 refinement steps" in ok.stderr
    budget = os.path.getsize(tmp_path / "a.rdc")
    sized = subprocess.run(RDEIC + ["encode", str(src), str(tmp_path / "b.rdc"), "--size", str(budget),
                                    "--refine", "2", "--model", model], capture_output=True)
    assert sized.returncode == 0, sized.stderr
    assert os.path.getsize(tmp_path / "b.rdc") <= budget
    assert f"target {budget} bytes".encode() in sized.stderr
    # Refined unless every refined file missed the target, and then the warning says so.
    assert (b"2 refinement steps" in sized.stderr) != (b"every refined file was over the target" in sized.stderr)


def test_a_size_target_keeps_the_refined_file_within_it(shipped_refined):
    from rdeic_codec import target

    model, image, plain, _ = shipped_refined
    budget = len(plain.data)
    result, found = target.encode_at_rate(model, image, size=budget, refine=8)
    assert len(result.data) <= budget and not found.refine_missed
    # The file is the refined one at the λ it was written with, which codes the photo better than the
    # plain file at that λ on the loss refinement lowers.
    unrefined = codec.encode(model, image, result.lam)
    assert result.data != unrefined.data
    assert _file_loss(model, image, result.data, result.lam) < _file_loss(model, image, unrefined.data, result.lam)
    assert codec.decode(model, result.data, steps=0).shape == image.shape


def test_a_size_target_falls_back_to_the_plain_file_when_refined_ones_miss(tiny_hyperprior_model, monkeypatch):
    from rdeic_codec import target

    image = smooth_image(64, 96)
    plain_encode = codec.encode_analysis
    tries = []

    def swollen(model, analysis, lam, consume=False):  # every refined file 10 kB over what it would be
        r = plain_encode(model, analysis, lam, consume)
        if analysis.hyper is not None:
            tries.append(lam)
            r.data = r.data + bytes(10000)
        return r

    monkeypatch.setattr(codec, "encode_analysis", swollen)
    budget = len(codec.encode(tiny_hyperprior_model, image, 1.0).data)
    result, found = target.encode_at_rate(tiny_hyperprior_model, image, size=budget, refine=2)
    assert found.refine_missed and len(result.data) <= budget
    assert 1 <= len(tries) <= target.MAX_REFINES and tries == sorted(tries, reverse=True)


def test_eval_refines_every_file_and_says_so(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from rdeic_codec.cli import main

    model = make_tiny_model(str(tmp_path / "model"), profile="tiny-hyperprior")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(smooth_image(64, 96)).save(photos / "a.png")
    calls = []
    original = refine.refine
    monkeypatch.setattr(refine, "refine", lambda *a, **k: calls.append(a[4]) or original(*a, **k))
    args = ["eval", str(photos), "--lambda", "0.5,1", "--steps", "0", "--baselines", "none", "--model", model, "-q"]
    plain = CliRunner().invoke(main, args + ["-o", str(tmp_path / "plain")])
    assert plain.exit_code == 0 and calls == []
    refined = CliRunner().invoke(main, args + ["--refine", "2", "-o", str(tmp_path / "refined")])
    assert refined.exit_code == 0, refined.output
    assert calls == [2, 2]  # every file (one photo, two λ), with the steps asked for
    assert json.loads((tmp_path / "refined" / "results.json").read_text())["meta"]["refine"] == 2
    assert "encoded with --refine 2" in (tmp_path / "refined" / "summary.md").read_text().splitlines()[0]
    assert "--refine" not in (tmp_path / "plain" / "summary.md").read_text().splitlines()[0]
