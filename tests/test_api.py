"""The public Python API (rdeic_codec.Codec): what the README shows, with the command line's checks."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_tiny_model, smooth_image
from rdeic_codec import codec as core
from rdeic_codec.container import FormatError
from rdeic_codec.imageio import ImageError


@pytest.fixture(scope="module")
def api(tiny_model_dir):
    from rdeic_codec import Codec

    return Codec(tiny_model_dir, device="cpu")


def test_import_stays_free_of_torch_until_codec_is_used():
    code = ("import sys, rdeic_codec; assert 'torch' not in sys.modules; "
            "rdeic_codec.Codec; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_encode_and_decode_match_the_command_line(api, tiny_model_dir, tmp_path):
    img = smooth_image(80, 120)
    data = api.encode(img, lam=1.0)
    assert data == core.encode(api.model, img, 1.0).data
    src = tmp_path / "in.png"
    Image.fromarray(img).save(src)
    cli = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "rdeic"), "encode", str(src),
                          str(tmp_path / "a.rdc"), "--lambda", "1", "--model", tiny_model_dir, "-q"], capture_output=True)
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "a.rdc").read_bytes() == data
    assert api.encode(src, lam=1.0) == data == api.encode(src.read_bytes(), lam=1.0)
    pixels = api.decode(data, steps=2, detail=1.0)
    assert pixels.shape == img.shape and pixels.dtype == np.uint8
    assert np.array_equal(pixels, api.decode(tmp_path / "a.rdc", steps=2))  # deterministic, bytes or path
    header = api.info(data)
    assert (header.width, header.height, header.lam, header.model_id_hex) == (120, 80, 1.0, api.model_id)


def test_size_target_and_default_lambda(api):
    img = smooth_image(192, 256)
    assert api.encode(img) == api.encode(img, lam=0.25)
    result = api.encode_result(img, size=400)
    assert len(result.data) <= 400 and api.encode(img, size=400) == result.data
    assert api.lambda_range == (pytest.approx(0.1), pytest.approx(2.0))


def test_gray_and_rgba_arrays_are_coded_as_the_cli_codes_files(api):
    gray = smooth_image(64, 64)[:, :, 0]
    assert api.encode(gray) == api.encode(np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.dstack([smooth_image(64, 64), np.full((64, 64), 255, np.uint8)])
    with pytest.warns(UserWarning, match="alpha"):
        assert api.encode(rgba) == api.encode(rgba[:, :, :3])


def test_bad_input_raises_the_cli_messages(api, tmp_path):
    img = smooth_image(64, 64)
    with pytest.raises(core.CodecError, match="outside this model's range"):
        api.encode(img, lam=5)
    with pytest.raises(ImageError, match="uint8"):
        api.encode(img.astype(np.float32))
    with pytest.raises(ImageError, match="not an image"):
        api.encode(b"not an image")
    with pytest.raises(ImageError, match="no such file"):
        api.encode(tmp_path / "missing.png")
    with pytest.raises(FormatError, match="not an .rdc file"):
        api.decode(b"junk bytes")
    with pytest.raises(core.CodecError, match="--steps"):
        api.decode(api.encode(img), steps=11)
    with pytest.raises(ValueError):  # every input error is a ValueError
        api.encode(img, lam=0.5, size=100)


def test_max_pixels_guards_arrays_files_and_decodes(tiny_model_dir, tmp_path):
    from rdeic_codec import Codec

    small = Codec(tiny_model_dir, device="cpu", max_pixels=64 * 64)
    img = smooth_image(64, 128)
    with pytest.raises(core.CodecError, match="exceeds --max-pixels 4096"):
        small.encode(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    with pytest.raises(core.CodecError, match="exceeds --max-pixels"):
        small.encode(buf.getvalue())
    data = Codec(tiny_model_dir, device="cpu").encode(img)
    with pytest.raises(core.CodecError, match="exceeds --max-pixels"):
        small.decode(data)


def test_a_file_from_another_model_is_refused(api, tmp_path):
    from rdeic_codec import Codec

    other = Codec(make_tiny_model(str(tmp_path / "other"), seed=1), device="cpu")
    with pytest.raises(core.CodecError, match="made with model"):
        api.decode(other.encode(smooth_image(64, 64)))


def test_the_worker_pool_example_compresses_a_folder(tiny_model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(64, 96, seed=i)).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"junk")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "compress_folder.py"), str(folder),
                          str(tmp_path / "out"), "--workers", "2", "--model", tiny_model_dir, "--lambda", "0.5"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 1, out.stderr  # the broken file fails; the others are written
    assert "broken.png: failed: input is not an image" in out.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["p0.rdc", "p1.rdc", "p2.rdc"]
    from rdeic_codec import Codec

    api = Codec(tiny_model_dir, device="cpu")
    for i in range(3):
        img = smooth_image(64, 96, seed=i)
        assert (tmp_path / "out" / f"p{i}.rdc").read_bytes() == api.encode(img, lam=0.5)
