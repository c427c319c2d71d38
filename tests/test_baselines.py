"""Tests of the baseline codecs and rate matching (rdeic_codec.evaluation.baselines).

Command-line codecs are skipped, with the Debian package named, where their tools are missing
(tools/install-baselines.sh installs them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import sample_photo
from rdeic_codec.evaluation import baselines
from rdeic_codec.evaluation.metrics import psnr

PHOTO = Path(sample_photo("gb82_flowers.png"))
TARGETS = (0.25, 0.6, 1.5)  # bpp; rates on a tiny crop are far higher than on full images


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A small photo crop with odd sides (exercises avif-half's size parity)."""
    with Image.open(PHOTO) as im:
        return im.convert("RGB").crop((200, 180, 297, 255))  # 97 x 75


def _codec(name: str) -> baselines.Codec:
    codec = baselines.get_codec(name)
    try:
        codec.require()
    except baselines.BaselineUnavailable as err:
        pytest.skip(str(err))
    return codec


@pytest.mark.parametrize("name", sorted(baselines.CODECS))
def test_roundtrip_shape_rate_and_quality(name, image):
    codec = _codec(name)
    setting = codec.settings[-10]  # high quality: JPEG/WebP 91, AVIF quantizer 9, JXL d=1.0
    enc = codec.roundtrip(image, setting)
    w, h = image.size
    assert enc.decoded.shape == (h, w, 3) and enc.decoded.dtype == np.uint8
    assert enc.bpp == pytest.approx(8 * enc.num_bytes / (w * h))
    # Half resolution caps the quality of avif-half on this textured crop.
    assert psnr(np.asarray(image), enc.decoded) > (20.0 if name == "avif-half" else 28.0)
    np.testing.assert_array_equal(codec.decode(enc.data), enc.decoded)  # decode is standalone


@pytest.mark.parametrize("name", sorted(baselines.CODECS))
def test_find_close_never_exceeds_target(name, image):
    codec = _codec(name)
    for target in TARGETS:
        res = baselines.find_close(codec, image, target)
        assert res.codec == name and res.target_bpp == target
        if not res.reachable:
            assert res.encoded is None and res.min_bpp > target
            continue
        enc = res.encoded
        assert enc.bpp <= target
        assert res.min_bpp <= enc.bpp
        # Largest: the next setting up (if any) overshoots the target.
        i = codec.settings.index(enc.setting)
        if i + 1 < len(codec.settings):
            assert codec.roundtrip(image, codec.settings[i + 1]).bpp > target


@pytest.mark.parametrize("name", sorted(baselines.CODECS))
def test_find_close_reports_unreachable(name, image):
    _codec(name)  # skips when the tools are missing
    res = baselines.find_close(name, image, 0.001)
    assert not res.reachable and res.encoded is None
    assert res.min_bpp > 0.001 and res.tries == 1


def test_avif_half_reaches_lower_rates_than_avif(image):
    full, half = _codec("avif"), _codec("avif-half")
    lowest_full = full.roundtrip(image, full.settings[0])
    lowest_half = half.roundtrip(image, half.settings[0])
    assert lowest_half.bpp < lowest_full.bpp
    assert lowest_half.decoded.shape == lowest_full.decoded.shape


def test_missing_tool_names_debian_package(monkeypatch, image):
    monkeypatch.setenv("PATH", "/nonexistent")
    for name, package in (("webp", "webp"), ("avif", "libavif-bin"), ("jxl", "libjxl-tools")):
        codec = baselines.get_codec(name)
        assert not codec.available()
        with pytest.raises(baselines.BaselineUnavailable, match=package):
            codec.encode(image, codec.settings[0])
        with pytest.raises(baselines.BaselineUnavailable, match=package):
            baselines.find_close(codec, image, 1.0)
    assert baselines.get_codec("jpeg").available()  # Pillow needs no tool


def test_unknown_codec():
    with pytest.raises(ValueError, match="unknown baseline codec"):
        baselines.get_codec("bpg")


def test_settings_are_ordered_small_to_large_files(image):
    codec = baselines.get_codec("jpeg")
    sizes = [codec.roundtrip(image, s).num_bytes for s in (1.0, 30.0, 90.0)]
    assert sizes == sorted(sizes)


def test_bisect_settings_asks_each_setting_once_and_picks_the_largest_fit():
    settings = tuple(float(q) for q in range(10))
    rates = {s: 0.1 * (s + 1) for s in settings}  # 0.1 .. 1.0 bpp
    asked = []

    def bpp_of(setting):
        asked.append(setting)
        return rates[setting]

    assert baselines.bisect_settings(settings, 0.55, bpp_of) == (4.0, 0.1)
    assert len(asked) == len(set(asked)) and 5.0 in asked  # the next setting up was seen to overshoot
    assert baselines.bisect_settings(settings, 0.05, rates.get) == (None, 0.1)
    assert baselines.bisect_settings(settings, 5.0, rates.get) == (9.0, 0.1)


def test_roundtrip_times_its_encode_and_decode(image):
    enc = baselines.get_codec("jpeg").roundtrip(image, 50.0)
    assert enc.encode_s > 0 and enc.decode_s > 0
