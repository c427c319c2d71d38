"""Bad input, corrupt files, hostile files (issue 5): clear one-line errors, nothing lost.

A refusal is a FormatError, CodecError, ImageError or ModelError with a one-line message, which the
command line prints as ``rdeic: error: ...`` with a non-zero exit and no output file. Measured counts
of what these tests and tools/robustness_report.py try are in docs/robustness.md.

Everything runs on the tiny random-weight model of conftest.py and on images made here.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from rdeic_codec import codec, container, imageio
from rdeic_codec.cli import main
from rdeic_codec.codec import CodecError
from rdeic_codec.container import MAGIC, MAX_SIDE, FormatError, Header, pack, unpack
from rdeic_codec.imageio import load_image
from rdeic_codec.model import compute_model_id, load_model

from conftest import ROOT, smooth_image

FUZZ = dict(deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SAMPLE_SIZE = (40, 56)  # (height, width) of the real file the mutations start from
SMALL_LIMIT = 128 * 128  # --max-pixels for fuzzed decodes: keeps every decode small


# -- helpers ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rdc_sample(tiny_model) -> bytes:
    """A real .rdc file made by the tiny model."""
    return codec.encode(tiny_model, smooth_image(*SAMPLE_SIZE), 0.5).data


def craft(model_id: bytes, lam: float, width: int, height: int, payload: bytes, version: int = 1,
          declared_length: int | None = None) -> bytes:
    """Raw .rdc bytes with a valid CRC, bypassing pack()'s checks (a hostile encoder)."""
    n = len(payload) if declared_length is None else declared_length
    body = b"".join([MAGIC, bytes([version]), model_id, struct.pack("<e", lam), container._varint(width),
                     container._varint(height), container._varint(n), payload])
    return body + struct.pack("<I", zlib.crc32(body))


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def invoke(*args, input=None):
    """Run the CLI in-process; an exception that is not a user error propagates (and fails the test)."""
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def assert_one_line_error(result, *fragments):
    err = result.stderr
    assert result.exit_code != 0, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rdeic: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def image_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def rdc_file(tmp_path, rdc_sample):
    path = tmp_path / "a.rdc"
    path.write_bytes(rdc_sample)
    return path


# -- 1. corrupt and hostile .rdc files ---------------------------------------------------------------

def test_every_truncation_is_refused(tiny_model, rdc_sample):
    for n in range(len(rdc_sample)):
        with pytest.raises(FormatError, match="empty|truncated"):
            codec.decode(tiny_model, rdc_sample[:n])


def test_every_single_bit_flip_is_caught_before_the_decoder(tiny_model, rdc_sample, monkeypatch):
    def decoder_ran(*args, **kwargs):
        raise AssertionError("the entropy decoder ran on a damaged file")

    monkeypatch.setattr(codec, "decode_latent_code", decoder_ran)
    for bit in range(8 * len(rdc_sample)):
        with pytest.raises(FormatError):
            codec.decode(tiny_model, flip(rdc_sample, bit))


@pytest.mark.parametrize("data, message", [
    (b"", "file is empty"),
    (b"R", "truncated inside the header"),
    (b"RDC", "truncated inside the header"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "not an .rdc file"),
    (b"Hello, world. This is a text file.\n", "not an .rdc file"),
    (b"rdc\x01" + bytes(30), "not an .rdc file"),
    (bytes(64), "not an .rdc file"),
])
def test_non_rdc_bytes_are_named(data, message):
    with pytest.raises(FormatError, match=message):
        unpack(data)


def test_version_magic_and_trailing_bytes(rdc_sample):
    mid = rdc_sample[4:8]
    versions = [(2, "newer rdeic is needed"), (255, "newer rdeic is needed"), (0, "unknown format version")]
    for version, message in versions:
        with pytest.raises(FormatError, match=message):
            unpack(craft(mid, 0.5, 8, 8, b"\x00" * 8, version=version))
    with pytest.raises(FormatError, match="2 unexpected bytes after the end"):
        unpack(rdc_sample + b"\x00\x00")
    with pytest.raises(FormatError, match="wrong magic"):
        unpack(b"RDX" + rdc_sample[3:])


@pytest.mark.parametrize("declared", [5, 1000, 2**34 - 1])
def test_payload_length_past_the_end(rdc_sample, declared):
    data = craft(rdc_sample[4:8], 0.5, 8, 8, b"\x00" * 4, declared_length=declared)
    with pytest.raises(FormatError, match=f"truncated: header declares {declared} payload bytes"):
        unpack(data)


def test_overlong_varint_is_malformed():
    data = MAGIC + b"\x01" + bytes(4) + struct.pack("<e", 0.5) + b"\xff" * 5 + b"\x01" * 20
    with pytest.raises(FormatError, match="width field is malformed"):
        unpack(data)


@pytest.mark.parametrize("width, height", [(0, 0), (0, 5), (5, 0), (MAX_SIDE + 1, 1), (1, 2**34)])
def test_impossible_sizes_are_refused(tiny_model, width, height):
    with pytest.raises(FormatError, match="declared image size .* is invalid"):
        codec.decode(tiny_model, craft(tiny_model.model_id, 0.5, width, height, b"\x00" * 8))


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), float("-inf"), 0.0, -0.5])
def test_invalid_lambda_is_refused(tiny_model, lam):
    with pytest.raises(FormatError, match="rate parameter"):
        codec.decode(tiny_model, craft(tiny_model.model_id, lam, 8, 8, b"\x00" * 8))


def test_file_from_another_model(tiny_model, rdc_sample):
    header, payload = unpack(rdc_sample)
    other = pack(Header(b"\x12\x34\x56\x78", header.lam, header.width, header.height), payload)
    with pytest.raises(CodecError, match="made with model 12345678, not with this model"):
        codec.decode(tiny_model, other)


@pytest.fixture
def nothing_may_be_allocated(tiny_model, monkeypatch):
    """Make every step after the size guard fail loudly, so that reaching one is a test failure."""
    def allocated(*args, **kwargs):
        raise AssertionError("the decoder allocated for a file over --max-pixels")

    monkeypatch.setattr(codec, "decode_latent_code", allocated)
    monkeypatch.setattr(codec, "LatentDecoder", allocated)
    monkeypatch.setattr(codec.tiled, "decode_image", allocated)
    monkeypatch.setattr(type(tiny_model), "entropy_path", allocated)


@pytest.mark.parametrize("width, height, limit, message", [
    (100000, 100000, None, "declared size 100000×100000 exceeds --max-pixels 100000000"),
    (MAX_SIDE, MAX_SIDE, None, "exceeds --max-pixels"),
    (10001, 10000, None, "exceeds --max-pixels"),
    # Thin images: small declared area, but decoded at sides rounded up to 64.
    (1, MAX_SIDE, 50_000_000, "is coded at 64×1048576, which exceeds --max-pixels 50000000"),
    (65, 65, 65 * 65, "is coded at 128×128"),
    (1, 1, 1000, "is coded at 64×64"),
])
def test_declared_size_is_checked_before_anything_is_allocated(tiny_model, nothing_may_be_allocated,
                                                              width, height, limit, message):
    data = craft(tiny_model.model_id, 0.5, width, height, b"\x00" * 8)
    kwargs = {} if limit is None else {"max_pixels": limit}
    with pytest.raises(CodecError, match=message):
        codec.decode(tiny_model, data, **kwargs)


def test_a_file_at_the_limit_decodes(tiny_model):
    data = codec.encode(tiny_model, smooth_image(64, 64), 0.5).data
    assert codec.decode(tiny_model, data, steps=0, max_pixels=64 * 64).shape == (64, 64, 3)


def test_cli_refuses_over_max_pixels_without_output(tmp_path, tiny_model_dir, rdc_file):
    out = tmp_path / "out.png"
    result = invoke("decode", rdc_file, out, "--model", tiny_model_dir, "--max-pixels", 100)
    assert_one_line_error(result, "exceeds --max-pixels 100")
    assert not out.exists()


class CountingDecoder(codec.LatentDecoder):
    """Counts the symbols the range decoder is asked for."""

    symbols = 0

    def __init__(self, *args):
        super().__init__(*args)
        inner = self.coder

        class Counter:
            def decode(self, model, count):
                CountingDecoder.symbols += count
                return inner.decode(model, count)

        self.coder = Counter()


@pytest.mark.parametrize("payload", [b"", b"\xff" * 4, bytes(range(256)) * 4])
def test_garbage_payload_decodes_a_fixed_number_of_symbols(tiny_model, monkeypatch, payload):
    """The range decoder reads a count fixed by the declared size, whatever the payload: it cannot loop."""
    monkeypatch.setattr(codec, "LatentDecoder", CountingDecoder)
    CountingDecoder.symbols = 0
    width, height = 130, 70  # decoded at 192×128
    data = craft(tiny_model.model_id, 0.5, width, height, payload)
    m = tiny_model.config["compression"]["M"]
    expected = (192 // 64) * (128 // 64) + m * (192 // 16) * (128 // 16)  # VQ indices at 1/64, y at 1/16
    try:
        out = codec.decode(tiny_model, data, steps=0)
    except FormatError as e:  # constriction refuses some garbage: it stops early, with this error
        assert "coded stream is invalid" in str(e)
        assert CountingDecoder.symbols <= expected
    else:
        assert out.shape == (height, width, 3) and out.dtype == np.uint8
        assert CountingDecoder.symbols == expected


def test_payload_not_a_whole_number_of_words(tiny_model):
    with pytest.raises(FormatError, match="coded stream is invalid .*32-bit words"):
        codec.decode(tiny_model, craft(tiny_model.model_id, 0.5, 8, 8, b"\x01\x02\x03"))


def test_lambda_outside_the_models_range_in_a_crafted_file_decodes(tiny_model, rdc_sample):
    """A valid-CRC file with λ = 60000 (the encoder never writes it) decodes: the gains clamp λ."""
    header, payload = unpack(rdc_sample)
    data = craft(tiny_model.model_id, 60000.0, header.width, header.height, payload)
    assert codec.decode(tiny_model, data, steps=0).shape == (header.height, header.width, 3)


# -- 2. property-based fuzzing -------------------------------------------------------------------------

@settings(max_examples=300, **FUZZ)
@given(st.one_of(st.binary(max_size=64), st.binary(max_size=48).map(lambda b: MAGIC + b"\x01" + b)))
def test_unpack_of_arbitrary_bytes(data):
    try:
        header, payload = unpack(data)
    except FormatError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert 1 <= header.width <= MAX_SIDE and 1 <= header.height <= MAX_SIDE


@settings(max_examples=100, **FUZZ)
@given(st.integers(1, MAX_SIDE), st.integers(1, MAX_SIDE), st.floats(0.01, 60000.0), st.binary(max_size=300))
def test_pack_unpack_roundtrip(width, height, lam, payload):
    header = Header(b"\x01\x02\x03\x04", container.quantize_lambda(lam), width, height)
    assert unpack(pack(header, payload)) == (header, payload)


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """1 to 4 random edits of ``data``: bit flips, byte overwrites, insertions, deletions, truncation."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if kind == "flip" and b:
            i = draw(st.integers(0, 8 * len(b) - 1))
            b[i // 8] ^= 1 << (i % 8)
        elif kind == "set" and b:
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        elif kind == "insert":
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and b:
            i = draw(st.integers(0, len(b) - 1))
            del b[i : i + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del b[draw(st.integers(0, len(b))) :]
    return bytes(b)


@settings(max_examples=200, **FUZZ)
@given(st.data())
def test_decode_of_a_mutated_real_file(tiny_model, rdc_sample, data):
    mutated = data.draw(mutations(rdc_sample))
    if mutated == rdc_sample:
        return
    with pytest.raises((FormatError, CodecError)):  # the CRC (or a header check) refuses it
        codec.decode(tiny_model, mutated, steps=0, max_pixels=SMALL_LIMIT)


@settings(max_examples=15, **FUZZ)
@given(st.data(), st.integers(1, 96), st.integers(1, 96), st.sampled_from([0, 1]))
def test_decode_of_a_crafted_payload_with_a_valid_crc(tiny_model, rdc_sample, data, width, height, steps):
    """A hostile encoder's file passes the CRC: it must fail cleanly or decode to an image of its size."""
    real_payload = unpack(rdc_sample)[1]
    words = st.lists(st.integers(0, 2**32 - 1), max_size=16).map(lambda w: struct.pack(f"<{len(w)}I", *w))
    payload = data.draw(st.one_of(words, mutations(real_payload), st.binary(max_size=64)))
    try:
        out = codec.decode(tiny_model, craft(tiny_model.model_id, 0.5, width, height, payload), steps=steps,
                           max_pixels=SMALL_LIMIT)
    except FormatError as e:
        assert "coded stream is invalid" in str(e) and "\n" not in str(e)
    else:
        assert out.shape == (height, width, 3) and out.dtype == np.uint8


# -- 3. input images --------------------------------------------------------------------------------------

RGB = smooth_image(13, 17, seed=3)


def _modes():
    base = Image.fromarray(RGB)
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    rgba[0, 0, 3] = 0  # one transparent pixel, so that formats keep the alpha channel
    alpha = Image.fromarray(rgba, "RGBA")
    cases = []
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP"):
        cases += [(fmt, "RGB", base), (fmt, "L", base.convert("L")), (fmt, "1", base.convert("1"))]
        if fmt != "JPEG":
            cases.append((fmt, "P", base.convert("P")))
        if fmt not in ("JPEG", "BMP"):  # Pillow writes neither with alpha
            cases.append((fmt, "RGBA", alpha))
        if fmt in ("PNG", "TIFF"):
            cases += [(fmt, "LA", alpha.convert("LA")), (fmt, "I;16", Image.fromarray(
                (RGB[..., 0].astype(np.uint16) * 257)))]
        if fmt in ("JPEG", "TIFF"):
            cases.append((fmt, "CMYK", base.convert("CMYK")))
    cases.append(("GIF", "P", base.convert("P")))
    return cases


@pytest.mark.parametrize("fmt, mode, image", _modes(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_format_and_mode_loads_as_rgb8(fmt, mode, image):
    loaded = load_image(image_bytes(image, fmt))
    assert loaded.pixels.shape == (13, 17, 3) and loaded.pixels.dtype == np.uint8
    assert loaded.had_alpha == (mode in ("RGBA", "LA"))
    if fmt in ("PNG", "TIFF", "BMP") and mode in ("RGB", "CMYK"):
        assert np.array_equal(loaded.pixels, RGB)  # lossless formats: exact
    if mode == "RGBA" and fmt in ("PNG", "TIFF"):
        assert loaded.pixels[0, 0].tolist() == [255, 255, 255]  # transparent → white


def test_16_bit_values_are_rounded_to_8_bit():
    levels = np.array([[0, 257, 128 * 257, 128 * 257 + 128, 128 * 257 + 129, 65535]], np.uint16)
    for fmt in ("PNG", "TIFF"):
        loaded = load_image(image_bytes(Image.fromarray(levels), fmt))
        assert loaded.pixels[0, :, 0].tolist() == [0, 1, 128, 128, 129, 255]


def _png16_rgb(a: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow does not write this mode)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_rgb_png():
    a = RGB.astype(np.uint16) * 257
    loaded = load_image(_png16_rgb(a))
    assert np.array_equal(loaded.pixels, RGB)


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (0, 100, 200)
    rgba[..., 3] = [[0, 255], [128, 255]]
    loaded = load_image(image_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert loaded.had_alpha
    assert loaded.pixels[0, 0].tolist() == [255, 255, 255]
    assert loaded.pixels[0, 1].tolist() == [0, 100, 200]
    assert loaded.pixels[1, 0].tolist() == pytest.approx([127, 177, 227], abs=1)


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_transparent_colour_key_is_composited_over_white(mode):
    """PNG tRNS / GIF transparency without an alpha channel is alpha too."""
    image = Image.fromarray(RGB).convert(mode)
    key = image.getpixel((0, 0))
    fmt = "GIF" if mode == "P" else "PNG"
    loaded = load_image(image_bytes(image, fmt, transparency=key))
    assert loaded.had_alpha and loaded.pixels[0, 0].tolist() == [255, 255, 255]


ORIENTED = {  # EXIF orientation → what a viewer shows, for the stored array a
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    loaded = load_image(image_bytes(Image.fromarray(RGB), "PNG", exif=exif))
    assert np.array_equal(loaded.pixels, ORIENTED[orientation](RGB))


def test_exif_orientation_in_jpeg():
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(image_bytes(Image.fromarray(RGB), "JPEG", exif=exif, quality=95))
    assert loaded.pixels.shape == (17, 13, 3)
    assert np.abs(loaded.pixels.astype(int) - np.rot90(RGB, -1)).mean() < 8


@pytest.mark.parametrize("size", [(1, 130), (65, 1), (333, 1001)])
def test_odd_sizes_are_restored_exactly(tiny_model, size):
    image = smooth_image(*size)
    out = codec.decode(tiny_model, codec.encode(tiny_model, image, 0.5).data, steps=0)  # sizes: steps don't matter
    assert out.shape == image.shape


def test_one_pixel_image_through_the_cli(tmp_path, tiny_model_dir):
    Image.new("RGB", (1, 1), (200, 30, 90)).save(tmp_path / "dot.png")
    enc = invoke("encode", tmp_path / "dot.png", tmp_path / "dot.rdc", "--model", tiny_model_dir, "-q")
    assert enc.exit_code == 0, enc.stderr
    dec = invoke("decode", tmp_path / "dot.rdc", tmp_path / "back.png", "--model", tiny_model_dir, "-q",
                 "--steps", "1")
    assert dec.exit_code == 0, dec.stderr
    with Image.open(tmp_path / "back.png") as im:
        assert im.size == (1, 1) and im.mode == "RGB"


def test_alpha_input_warns_through_the_cli(tmp_path, tiny_model_dir):
    Image.new("RGBA", (9, 7), (10, 20, 30, 0)).save(tmp_path / "a.png")
    result = invoke("encode", tmp_path / "a.png", tmp_path / "a.rdc", "--model", tiny_model_dir)
    assert result.exit_code == 0
    assert "rdeic: warning: the alpha channel is not coded; composited over white" in result.stderr


def _png_with_ihdr_size(width, height) -> bytes:
    good = image_bytes(Image.new("RGB", (4, 4)), "PNG")
    ihdr = b"IHDR" + struct.pack(">II", width, height) + good[24:29]
    return good[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + good[33:]


UNREADABLE = {
    "text": b"just some text\n",
    "empty": b"",
    "random": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
    "truncated png": image_bytes(Image.fromarray(RGB), "PNG")[:60],
    "damaged png": image_bytes(Image.fromarray(RGB), "PNG")[:40] + b"\x00" * 30,
    "truncated jpeg": image_bytes(Image.fromarray(RGB), "JPEG")[:200],
    "png declaring 100000x100000": _png_with_ihdr_size(100000, 100000),
    "an rdc file": craft(b"\x00" * 4, 0.5, 8, 8, b"\x00" * 4),
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_input_is_one_line_error(tmp_path, tiny_model_dir, name):
    src = tmp_path / "in.png"
    src.write_bytes(UNREADABLE[name])
    out = tmp_path / "out.rdc"
    result = invoke("encode", src, out, "--model", tiny_model_dir)
    assert_one_line_error(result, "input")
    assert listing(tmp_path) == ["in.png"]


@pytest.mark.parametrize("width, height, args, message", [
    (20000, 6000, (), "input image 20000×6000 exceeds --max-pixels 100000000"),
    (1, 2000000, (), "input image 1×2000000 is coded at 64×2000000, which exceeds --max-pixels 100000000"),
    (24, 50, ("--max-pixels", "1000"), "input image 24×50 exceeds --max-pixels 1000"),
    (40, 30, ("--max-pixels", "4000"), "is coded at 64×64"),
])
def test_encode_refuses_large_images_before_decoding_their_pixels(tmp_path, tiny_model_dir, monkeypatch,
                                                                 width, height, args, message):
    from PIL import ImageFile

    def pixels_decoded(*a, **k):
        raise AssertionError("the pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", pixels_decoded)
    (tmp_path / "big.png").write_bytes(_png_with_ihdr_size(width, height))
    result = invoke("encode", tmp_path / "big.png", tmp_path / "big.rdc", "--model", tiny_model_dir, *args)
    assert_one_line_error(result, message)
    assert "Warning" not in result.stderr and not (tmp_path / "big.rdc").exists()


@pytest.mark.parametrize("path, message", [("missing.png", "no such file"), (".", "is a directory")])
def test_missing_or_directory_input(tmp_path, tiny_model_dir, path, message):
    result = invoke("encode", tmp_path / path, tmp_path / "out.rdc", "--model", tiny_model_dir)
    assert_one_line_error(result, message)
    assert not (tmp_path / "out.rdc").exists()


# -- 4. outputs ---------------------------------------------------------------------------------------------

def test_existing_output_is_replaced_only_with_force(tmp_path, tiny_model_dir, src_png, rdc_file):
    for args in (("encode", src_png, tmp_path / "x.rdc"), ("decode", rdc_file, tmp_path / "x.png", "-s", "0")):
        target = args[2]
        target.write_bytes(b"precious")
        result = invoke(*args, "--model", tiny_model_dir)
        assert_one_line_error(result, "exists; use --force")
        assert target.read_bytes() == b"precious"
        assert invoke(*args, "--model", tiny_model_dir, "--force").exit_code == 0
        assert target.read_bytes() != b"precious"


def test_output_is_never_the_input(tmp_path, tiny_model_dir, src_png, rdc_sample):
    original = src_png.read_bytes()
    os.symlink(src_png, tmp_path / "link.rdc")
    os.link(src_png, tmp_path / "hard.rdc")
    for out in (src_png, tmp_path / "link.rdc", tmp_path / "hard.rdc"):
        result = invoke("encode", src_png, out, "--model", tiny_model_dir, "--force")
        assert_one_line_error(result, "output is the input file")
        assert src_png.read_bytes() == original
    disguised = tmp_path / "coded.png"  # an .rdc file named .png, decoded onto itself
    disguised.write_bytes(rdc_sample)
    result = invoke("decode", disguised, disguised, "--model", tiny_model_dir, "--force")
    assert_one_line_error(result, "output is the input file")
    assert disguised.read_bytes() == rdc_sample


def test_decode_error_leaves_nothing(tmp_path, tiny_model_dir, rdc_sample):
    bad = tmp_path / "bad.rdc"
    bad.write_bytes(flip(rdc_sample, 8 * (len(rdc_sample) - 8)))  # a bit in the payload
    (tmp_path / "old.png").write_bytes(b"old")
    before = listing(tmp_path)
    for out in ("new.png", "old.png"):
        result = invoke("decode", bad, tmp_path / out, "--model", tiny_model_dir, "--force")
        assert_one_line_error(result, "CRC-32 mismatch")
    assert listing(tmp_path) == before and (tmp_path / "old.png").read_bytes() == b"old"


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["codec.decode", "os.replace", "file write"])
def test_ctrl_c_leaves_no_partial_file(tmp_path, tiny_model_dir, rdc_file, monkeypatch, where):
    if where == "codec.decode":
        monkeypatch.setattr(codec, "decode", _interrupt)
    elif where == "os.replace":
        monkeypatch.setattr(imageio.os, "replace", _interrupt)
    else:  # interrupted halfway through writing the temporary file
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                raise KeyboardInterrupt

        monkeypatch.setattr(imageio.os, "fdopen", lambda fd, *a, **k: HalfWriter(real_fdopen(fd, *a, **k)))
    (tmp_path / "old.png").write_bytes(b"old")
    before = listing(tmp_path)
    for out in ("new.png", "old.png"):
        result = invoke("decode", rdc_file, tmp_path / out, "-s", "0", "--model", tiny_model_dir, "--force")
        assert result.exit_code == 130
        assert_one_line_error(result, "interrupted")
    assert listing(tmp_path) == before and (tmp_path / "old.png").read_bytes() == b"old"


@pytest.mark.parametrize("error, message", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
])
def test_write_failure_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir, src_png, monkeypatch, error, message):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(imageio.os, "replace", fail)
    before = listing(tmp_path)
    result = invoke("encode", src_png, tmp_path / "x.rdc", "--model", tiny_model_dir)
    assert_one_line_error(result, "cannot write", message)
    assert listing(tmp_path) == before


def test_unwritable_folder(tmp_path, tiny_model_dir, src_png, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(imageio.tempfile, "mkstemp", denied)
    result = invoke("encode", src_png, tmp_path / "x.rdc", "--model", tiny_model_dir)
    assert_one_line_error(result, "cannot write", "Permission denied")
    result = invoke("encode", src_png, tmp_path / "no" / "x.rdc", "--model", tiny_model_dir)
    assert_one_line_error(result, "does not exist")
    result = invoke("encode", src_png, tmp_path, "--model", tiny_model_dir)
    assert_one_line_error(result, "is a directory")


def test_unsupported_output_format(tmp_path, tiny_model_dir, rdc_file):
    result = invoke("decode", rdc_file, tmp_path / "out.jpg", "--model", tiny_model_dir)
    assert_one_line_error(result, "cannot write .jpg")
    assert not (tmp_path / "out.jpg").exists()


def test_stdout_only_for_dash(tmp_path, tiny_model_dir, src_png):
    to_file = invoke("encode", src_png, tmp_path / "a.rdc", "--model", tiny_model_dir)
    assert to_file.exit_code == 0 and to_file.stdout_bytes == b"" and "bpp" in to_file.stderr
    piped = invoke("encode", "-", "-", "--model", tiny_model_dir, input=src_png.read_bytes())
    assert piped.exit_code == 0 and piped.stdout_bytes == (tmp_path / "a.rdc").read_bytes()
    decoded = invoke("decode", "-", "-", "-s", "0", "-q", "--model", tiny_model_dir, input=piped.stdout_bytes)
    assert decoded.exit_code == 0 and decoded.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n" and decoded.stderr == ""
    decoded = invoke("decode", tmp_path / "a.rdc", tmp_path / "a.png", "-s", "0", "--model", tiny_model_dir)
    assert decoded.exit_code == 0 and decoded.stdout_bytes == b""


def test_output_has_the_usual_permissions(tmp_path, tiny_model_dir, src_png):
    old = os.umask(0o022)
    try:
        assert invoke("encode", src_png, tmp_path / "a.rdc", "--model", tiny_model_dir).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.rdc").stat().st_mode) == 0o644  # not mkstemp's 0600


# -- 5. model directories ---------------------------------------------------------------------------------

def _rehash(folder):
    """Give a tampered model a matching id, so that the check after the id check is what refuses it."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["model_id"] = compute_model_id(folder, config)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def _edit_config(edit, rehash=True):
    def apply(folder):
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        edit(config)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        if rehash:
            _rehash(folder)
    return apply


def _edit_weights(component, edit):
    def apply(folder):
        path = os.path.join(folder, f"{component}.safetensors")
        state = load_file(path)
        edit(state)
        save_file(state, path)
        _rehash(folder)
    return apply


def _flip_weight_byte(folder):
    path = os.path.join(folder, "vae.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 1
    open(path, "wb").write(bytes(data))


class _Planted:
    """A pickle that creates a marker file when unpickled (what a hostile .bin/.pt could do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_pickle(folder):
    marker = os.path.join(folder, "PWNED")
    with open(os.path.join(folder, "unet.safetensors"), "wb") as f:
        pickle.dump({"weight": _Planted(marker)}, f)
    _rehash(folder)


def _first_key(state):
    return sorted(state)[0]


MODEL_DAMAGE = {
    "weights changed": (_flip_weight_byte, "do not match its model id"),
    "model id changed": (_edit_config(lambda c: c.update(model_id="00000000"), rehash=False),
                         "do not match its model id"),
    "section missing": (_edit_config(lambda c: c.pop("entropy"), rehash=False), "lacks the field(s) entropy"),
    "nested field missing": (_edit_config(lambda c: c["compression"].pop("N")), "field 'N' is missing"),
    "entropy field missing": (_edit_config(lambda c: c["entropy"].pop("max_symbol")), "field 'max_symbol' is missing"),
    "diffusion field missing": (_edit_config(lambda c: c["diffusion"].pop("relay_start")),
                                "field 'relay_start' is missing"),
    "bad scale table": (_edit_config(lambda c: c["entropy"].update(num_scales=1)), "not a valid rdeic config"),
    "negative channels": (_edit_config(lambda c: c["compression"].update(N=-3)), "not a valid rdeic config"),
    "config for other weights": (_edit_config(lambda c: c["compression"].update(codebook_size=64)),
                                 "compression.safetensors does not fit the config: size mismatch"),
    "tensor missing": (_edit_weights("vae", lambda s: s.pop(_first_key(s))),
                       "vae.safetensors does not fit the config: Missing key"),
    "tensor extra": (_edit_weights("control", lambda s: s.update(extra=torch.zeros(2))),
                     "control.safetensors does not fit the config: Unexpected key"),
    "integer weights": (_edit_weights("vae", lambda s: s.update({k: v.to(torch.int32) for k, v in s.items()})),
                        "vae.safetensors does not fit the config: "),
    "integer buffer": (_edit_weights("unet", lambda s: s.update(context=s["context"].to(torch.int32))),
                       "unet.safetensors does not fit the config: context is torch.int32, not torch.float32"),
    "pickle as weights": (_plant_pickle, "cannot read unet.safetensors"),
    "weight file missing": (lambda d: os.remove(os.path.join(d, "unet.safetensors")), "lacks unet.safetensors"),
    "config not json": (lambda d: open(os.path.join(d, "config.json"), "w").write("{nope"), "cannot read"),
    "config not utf-8": (lambda d: open(os.path.join(d, "config.json"), "wb").write(b"\xff\xfe{}"), "cannot read"),
    "config a list": (lambda d: open(os.path.join(d, "config.json"), "w").write("[]"), "is not a JSON object"),
    "no config": (lambda d: os.remove(os.path.join(d, "config.json")), "has no config.json"),
}


# Encoding loads only the compression module and the autoencoder; damage that fits the model id and
# is only in the UNet or control module (whose files encode still checks are safetensors) is refused
# by decode, the command that reads them.
DECODER_ONLY_DAMAGE = ("tensor extra", "integer buffer")


@pytest.mark.parametrize("name", sorted(MODEL_DAMAGE))
def test_damaged_model_is_refused(tmp_path, tiny_model_dir, src_png, name):
    damage, message = MODEL_DAMAGE[name]
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    damage(str(folder))
    output = tmp_path / "x.rdc"
    if name in DECODER_ONLY_DAMAGE:
        assert invoke("encode", src_png, output, "--model", folder).exit_code == 0
        result = invoke("decode", output, tmp_path / "x.png", "--model", folder)
        output = tmp_path / "x.png"
    else:
        result = invoke("encode", src_png, output, "--model", folder)
    assert_one_line_error(result, message)
    assert not output.exists()
    assert not (folder / "PWNED").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_weights_of_another_float_precision_load_as_float32(tmp_path, tiny_model_dir, dtype):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    _edit_weights("control", lambda s: s.update({k: v.to(dtype) for k, v in s.items()}))(str(folder))
    model = load_model(str(folder))
    assert all(p.dtype == torch.float32 for p in model.control.parameters())


def test_missing_model_directory(tmp_path, src_png):
    result = invoke("encode", src_png, tmp_path / "x.rdc", "--model", tmp_path / "nowhere")
    assert_one_line_error(result, "does not exist")


def test_weights_are_never_unpickled(tiny_model_dir, monkeypatch):
    def unpickling(*args, **kwargs):
        raise AssertionError("a model file was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, unpickling)
    monkeypatch.setattr(torch, "load", unpickling)
    model = load_model(tiny_model_dir)
    assert model.model_id.hex() == json.load(open(os.path.join(tiny_model_dir, "config.json")))["model_id"]


# -- the real process: one line on stderr, no traceback --------------------------------------------------

@pytest.mark.parametrize("case", ["truncated file", "damaged model"])
def test_real_process_prints_one_line(tmp_path, tiny_model_dir, rdc_sample, case):
    (tmp_path / "a.rdc").write_bytes(rdc_sample[: len(rdc_sample) // 2])
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    if case == "truncated file":
        args = ["decode", tmp_path / "a.rdc", tmp_path / "out.png", "--model", folder]
    else:
        _flip_weight_byte(str(folder))
        (tmp_path / "a.rdc").write_bytes(rdc_sample)
        args = ["decode", tmp_path / "a.rdc", tmp_path / "out.png", "--model", folder]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "rdeic")] + [str(a) for a in args],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("rdeic: error:"), out.stderr
    assert not (tmp_path / "out.png").exists()
