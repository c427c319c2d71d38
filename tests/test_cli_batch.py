"""`rdeic encode/decode` with many inputs and -o OUTDIR, and `rdeic encode --size/--bpp`, as a user runs them."""

import os
import subprocess
import sys

from PIL import Image

from conftest import ROOT, smooth_image

RDEIC = [sys.executable, os.path.join(ROOT, "bin", "rdeic")]


def run(*args):
    return subprocess.run(RDEIC + [str(a) for a in args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_many_files_one_run_with_a_failing_file_and_an_existing_output(tiny_model_dir, tmp_path):
    for i in range(3):
        Image.fromarray(smooth_image(64 + 16 * i, 96, seed=i)).save(tmp_path / f"p{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "p2.rdc").write_bytes(b"keep me")
    inputs = [tmp_path / "p0.png", tmp_path / "broken.png", tmp_path / "p1.png", tmp_path / "p2.png"]
    enc = run("encode", *inputs, "-o", out_dir, "--model", tiny_model_dir, "--threads", "1")
    assert enc.returncode == 1
    tail = enc.stderr.splitlines()[-3:]
    assert tail[0] == "rdeic: error: 2 of 4 files failed:"
    assert "broken.png: input is not an image" in tail[1] and "p2.rdc exists; use --force" in tail[2]
    assert "[4/4]" in enc.stderr  # the file counter (a bar on a terminal)
    assert sorted(os.listdir(out_dir)) == ["p0.rdc", "p1.rdc", "p2.rdc"]
    assert (out_dir / "p2.rdc").read_bytes() == b"keep me"
    forced = run("encode", tmp_path / "p2.png", "-o", out_dir, "--model", tiny_model_dir, "-f", "-q")
    assert forced.returncode == 0 and forced.stderr == "" and (out_dir / "p2.rdc").read_bytes()[:3] == b"RDC"

    rec = tmp_path / "rec" / "deeper"  # created as needed
    dec = run("decode", *sorted(out_dir.iterdir()), "-o", rec, "--steps", "1", "--model", tiny_model_dir)
    assert dec.returncode == 0, dec.stderr
    assert [Image.open(rec / f"p{i}.png").size for i in range(3)] == [(96, 64), (96, 80), (96, 96)]
    assert f"{rec}: 3 files" in dec.stderr.splitlines()[-1]


def test_an_output_that_is_an_input_is_refused(tiny_model_dir, tmp_path):
    Image.fromarray(smooth_image(64, 64)).save(tmp_path / "a.png")
    assert run("encode", tmp_path / "a.png", tmp_path / "a.rdc", "--model", tiny_model_dir, "-q").returncode == 0
    before = (tmp_path / "a.png").read_bytes()
    # decode a.rdc into the same folder: its output a.png is another input of the run.
    dec = run("decode", tmp_path / "a.rdc", tmp_path / "a.png", "-o", tmp_path, "--model", tiny_model_dir, "-f")
    assert dec.returncode == 1 and "refusing to overwrite an input" in dec.stderr
    assert (tmp_path / "a.png").read_bytes() == before
    two = run("encode", tmp_path / "a.png", tmp_path / "sub" / "a.png", "-o", tmp_path / "o", "--model", tiny_model_dir)
    assert two.returncode == 1 and "goes to" in two.stderr  # two inputs, one output name


def test_usage_errors_of_the_batch_form(tiny_model_dir, tmp_path):
    Image.fromarray(smooth_image(64, 64)).save(tmp_path / "a.png")
    three = run("encode", tmp_path / "a.png", tmp_path / "a.png", tmp_path / "x.rdc")
    assert three.returncode == 2 and "need -o OUTDIR" in three.stderr and not (tmp_path / "x.rdc").exists()
    one = run("encode", tmp_path / "a.png")
    assert one.returncode == 2 and "missing OUTPUT" in one.stderr
    stdin = run("decode", "-", "-o", tmp_path / "o")
    assert stdin.returncode == 2 and "standard input" in stdin.stderr
    # What would fail every file fails once, before the output folder is made.
    lam = run("encode", tmp_path / "a.png", tmp_path / "a.png", "-o", tmp_path / "o", "--lambda", "5",
              "--model", tiny_model_dir)
    assert lam.returncode == 1 and lam.stderr.count("\n") == 1 and "outside this model's range" in lam.stderr
    assert not (tmp_path / "o").exists()


def test_size_target_from_the_command_line(tiny_model_dir, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(192, 256)).save(src)
    ok = run("encode", src, tmp_path / "t.rdc", "--size", "0.4k", "--model", tiny_model_dir)
    assert ok.returncode == 0, ok.stderr
    size = (tmp_path / "t.rdc").stat().st_size
    assert size <= 400 and f"{size} bytes" in ok.stderr and "lambda" in ok.stderr and "target 400 bytes" in ok.stderr
    low = run("encode", src, tmp_path / "low.rdc", "--size", "10", "--model", tiny_model_dir)
    assert low.returncode == 1 and not (tmp_path / "low.rdc").exists()
    assert low.stderr.startswith("rdeic: error: target 10 bytes is below the smallest file")
    assert low.stderr.count("\n") == 1
    high = run("encode", src, tmp_path / "high.rdc", "--bpp", "1", "--model", tiny_model_dir)
    assert high.returncode == 0 and "rdeic: warning: target 6144 bytes is above the largest file" in high.stderr
    both = run("encode", src, tmp_path / "b.rdc", "--size", "400", "--lambda", "1", "--model", tiny_model_dir)
    assert both.returncode == 2 and not (tmp_path / "b.rdc").exists()
    bad = run("encode", src, tmp_path / "b.rdc", "--size", "lots", "--model", tiny_model_dir)
    assert bad.returncode == 2 and "1.5k" in bad.stderr


def test_size_target_on_a_fixed_lambda_model_says_why_not(tmp_path):
    import torch

    from rdeic_codec.model import RDEICModel, save_model
    from rdeic_codec.profiles import get_profile

    config = get_profile("tiny")
    config["compression"]["lambdas"] = None
    torch.manual_seed(0)
    save_model(RDEICModel(config), str(tmp_path / "fixed"), name="fixed", extra={"lambda": 2.0})
    Image.fromarray(smooth_image(64, 64)).save(tmp_path / "in.png")
    out = run("encode", tmp_path / "in.png", tmp_path / "o.rdc", "--bpp", "0.5", "--model", tmp_path / "fixed")
    assert out.returncode == 1 and "one fixed λ (2)" in out.stderr and not (tmp_path / "o.rdc").exists()
