"""Embedded ICC profiles: inputs are converted to sRGB before coding (rdeic_codec.imageio)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import ROOT, sample_photo
from rdeic_codec.imageio import load_image

D50 = (0.9642, 1.0, 0.8249)
# ProPhoto RGB (ROMM, D50): a wide gamut whose values, read as sRGB, look dull and dark.
PROPHOTO = {"r": (0.7977, 0.2880, 0.0), "g": (0.1352, 0.7119, 0.0), "b": (0.0313, 0.0001, 0.8249), "gamma": 1.8}


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(xyz) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in xyz)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4) + bytes(4) + bytes(2) + bytes(68)


def matrix_profile(red, green, blue, gamma: float, description: str) -> bytes:
    """An ICC v2 RGB display profile: D50-adapted colorants (XYZ of each primary) and one gamma per
    channel, the layout of Adobe RGB or ProPhoto profiles."""
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [(b"desc", _desc(description)), (b"wtpt", _xyz(D50)), (b"rXYZ", _xyz(red)), (b"gXYZ", _xyz(green)),
            (b"bXYZ", _xyz(blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
            (b"cprt", b"text" + bytes(4) + b"CC0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + bytes(12)
              + b"acsp" + bytes(24) + struct.pack(">I", 0) + b"".join(_s15(v) for v in D50) + bytes(48))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


PROPHOTO_ICC = matrix_profile(PROPHOTO["r"], PROPHOTO["g"], PROPHOTO["b"], PROPHOTO["gamma"], "test ProPhoto RGB")


def _srgb_conversion(raw: np.ndarray, icc: bytes) -> np.ndarray:
    """What a colour-managed viewer shows: the raw values converted from ``icc`` to sRGB."""
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    out = ImageCms.profileToProfile(Image.fromarray(raw), src, dst, outputMode="RGB",
                                    renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    return np.asarray(out)


def _tagged_png(raw: np.ndarray, icc: bytes | None, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(raw)
    if mode != im.mode:
        im = im.convert(mode)
    im.save(buf, format="PNG", **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(sample_photo("gb82_flowers.png")) as im:
        return np.asarray(im.convert("RGB"))[160:416, 160:416].copy()


def test_wide_gamut_input_is_converted_to_srgb(photo):
    loaded = load_image(_tagged_png(photo, PROPHOTO_ICC))
    expected = _srgb_conversion(photo, PROPHOTO_ICC)
    assert np.array_equal(loaded.pixels, expected)
    assert loaded.converted_from == "test ProPhoto RGB" and loaded.colour_note is None
    # The conversion matters: a reader that ignored the profile would be far off.
    assert np.abs(expected.astype(float) - photo).mean() > 10


def test_untagged_and_srgb_tagged_inputs_keep_their_values(photo):
    assert np.array_equal(load_image(_tagged_png(photo, None)).pixels, photo)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert np.abs(load_image(_tagged_png(photo, srgb)).pixels.astype(int) - photo).max() <= 1


def test_alpha_survives_the_conversion(photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:64, :64, 3] = 0  # a transparent corner: white after compositing
    loaded = load_image(_tagged_png(rgba, PROPHOTO_ICC, "RGBA"))
    assert loaded.had_alpha
    assert (loaded.pixels[:64, :64] == 255).all()
    assert np.array_equal(loaded.pixels[64:, 64:], _srgb_conversion(photo, PROPHOTO_ICC)[64:, 64:])


def test_unusable_profiles_are_ignored_with_a_note(photo):
    broken = load_image(_tagged_png(photo, b"not an icc profile" * 8))
    assert np.array_equal(broken.pixels, photo) and "cannot be read" in broken.colour_note
    gray = load_image(_tagged_png(photo[..., 0], PROPHOTO_ICC, "L"))  # an RGB profile on a grayscale image
    assert np.array_equal(gray.pixels[..., 1], photo[..., 0]) and "does not fit" in gray.colour_note


def test_tagged_photo_is_coded_as_its_srgb_conversion(tmp_path, tiny_model_dir, photo):
    """Through the command line: a ProPhoto-tagged photo gives the same file as its sRGB conversion saved
    untagged (so it decodes to those colours), not the file of its raw values; the decoded PNG
    carries no profile: it is sRGB."""
    rdeic = [sys.executable, os.path.join(ROOT, "bin", "rdeic")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args):
        out = subprocess.run(rdeic + [str(a) for a in args] + ["--model", tiny_model_dir], capture_output=True, env=env)
        assert out.returncode == 0, out.stderr.decode()

    files = {}
    for name, raw, icc in (("tagged", photo, PROPHOTO_ICC), ("converted", _srgb_conversion(photo, PROPHOTO_ICC), None),
                           ("raw", photo, None)):
        (tmp_path / f"{name}.png").write_bytes(_tagged_png(raw, icc))
        run("encode", tmp_path / f"{name}.png", tmp_path / f"{name}.rdc", "--lambda", "1")
        files[name] = (tmp_path / f"{name}.rdc").read_bytes()
    assert files["tagged"] == files["converted"] != files["raw"]
    run("decode", tmp_path / "tagged.rdc", tmp_path / "tagged-decoded.png", "--steps", "1")
    with Image.open(tmp_path / "tagged-decoded.png") as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info
