"""The command line end to end, as a user runs it (subprocesses of bin/rdeic)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHIPPED_MODEL, sample_photo, smooth_image

RDEIC = [sys.executable, os.path.join(ROOT, "bin", "rdeic")]


def run(*args, stdin=None, cwd=None):
    return subprocess.run(RDEIC + [str(a) for a in args], input=stdin, capture_output=True, cwd=cwd)


def test_help_does_not_import_torch():
    code = "import sys; from rdeic_codec.cli import main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    out = run("--help")
    assert out.returncode == 0 and b"encode" in out.stdout and b"decode" in out.stdout


def test_encode_info_decode_with_tiny_model(tiny_model_dir, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(80, 120)).save(src)
    enc = run("encode", src, tmp_path / "a.rdc", "--lambda", "1", "--model", tiny_model_dir)
    assert enc.returncode == 0, enc.stderr
    assert b"bpp" in enc.stderr and b"80" in enc.stderr
    info = run("info", tmp_path / "a.rdc")
    assert info.returncode == 0 and b"120x80" in info.stdout and b"lambda:         1" in info.stdout
    dec = run("decode", tmp_path / "a.rdc", tmp_path / "b.png", "--steps", "2", "--model", tiny_model_dir, "-q")
    assert dec.returncode == 0 and dec.stderr == b""
    assert Image.open(tmp_path / "b.png").size == (120, 80)
    half = run("decode", tmp_path / "a.rdc", tmp_path / "c.png", "--steps", "2", "--model", tiny_model_dir, "-q",
               "--half")
    assert half.returncode == 0, half.stderr
    diff = np.abs(np.asarray(Image.open(tmp_path / "c.png"), float) - np.asarray(Image.open(tmp_path / "b.png"), float))
    assert diff.mean() < 1.0


def test_pipes_through_stdin_and_stdout(tiny_model_dir, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(64, 64)).save(src)
    rdc = run("encode", "-", "-", "--model", tiny_model_dir, "-q", stdin=src.read_bytes())
    assert rdc.returncode == 0 and rdc.stdout[:3] == b"RDC"
    png = run("decode", "-", "-", "--steps", "1", "--model", tiny_model_dir, "-q", stdin=rdc.stdout)
    assert png.returncode == 0 and png.stdout[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_errors_are_one_line_and_leave_nothing(tiny_model_dir, tmp_path):
    junk = tmp_path / "junk.rdc"
    junk.write_bytes(b"this is not an rdc file")
    out = run("decode", junk, tmp_path / "out.png", "--model", tiny_model_dir)
    assert out.returncode != 0
    assert out.stderr.decode().strip().count("\n") == 0 and "rdeic: error:" in out.stderr.decode()
    assert not (tmp_path / "out.png").exists()
    missing = run("encode", tmp_path / "nope.png", tmp_path / "x.rdc", "--model", tiny_model_dir)
    assert missing.returncode != 0 and b"no such file" in missing.stderr and not (tmp_path / "x.rdc").exists()


def test_training_on_unusable_folders_is_one_line(tmp_path):
    for split in ("train", "valid"):
        os.makedirs(tmp_path / split)
        Image.fromarray(smooth_image(40, 40)).save(tmp_path / split / "small.png")
    out = run("train", tmp_path / "train", tmp_path / "valid", "--work", tmp_path / "work", "--profile", "tiny")
    err = out.stderr.decode().strip()
    assert out.returncode != 0 and err.count("\n") == 0 and "at least" in err, err
    (tmp_path / "train" / "small.png").unlink()
    out = run("train", tmp_path / "train", tmp_path / "valid", "--work", tmp_path / "work2", "--profile", "tiny")
    assert out.returncode != 0 and out.stderr.decode().strip() == f"rdeic: error: no images in {tmp_path / 'train'}"
    out = run("train", tmp_path / "train", tmp_path / "valid", "--work", tmp_path / "work3", "--from", tmp_path / "valid")
    err = out.stderr.decode().strip()
    assert out.returncode != 0 and err.count("\n") == 0 and "not an rdeic model directory" in err, err
    assert not (tmp_path / "work3").exists()


@pytest.mark.skipif(not os.path.isdir(SHIPPED_MODEL), reason="the shipped model is missing")
def test_shipped_model_reconstructs_a_photo(tmp_path):
    img = np.asarray(Image.open(sample_photo("gb82_city.png")).convert("RGB"))[:256, :256]
    src = tmp_path / "photo.png"
    Image.fromarray(img).save(src)
    assert run("encode", src, tmp_path / "p.rdc", "--lambda", "2").returncode == 0
    bpp = 8 * (tmp_path / "p.rdc").stat().st_size / img[..., 0].size
    assert bpp < 0.3
    assert run("decode", tmp_path / "p.rdc", tmp_path / "p.png", "--steps", "2").returncode == 0
    a = np.asarray(Image.open(tmp_path / "p.png")).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((a - img) ** 2))
    flat = np.broadcast_to(img.reshape(-1, 3).mean(0), img.shape)  # the image's mean colour everywhere
    flat_psnr = 10 * np.log10(255**2 / np.mean((flat - img) ** 2))
    assert psnr > flat_psnr + 2, (psnr, flat_psnr)  # recognisable: it carries the image's structure
    again = tmp_path / "q.png"
    assert run("decode", tmp_path / "p.rdc", again, "--steps", "2").returncode == 0
    assert again.read_bytes() == (tmp_path / "p.png").read_bytes()
