"""Tests of the baseline cache of ``rdeic eval`` (rdeic_codec.evaluation.cache and its use by the runner).

Runs ``rdeic eval`` with JPEG as the only baseline (Pillow: no tool to install) on two small
synthetic photos, with a tiny random model whose rates are raised as in tests/test_eval.py (λ = 2
within JPEG's reach, λ = 0.1 not). Every run uses a cache folder under tmp_path, never the user's.
JPEG's encoder is wrapped to record (photo size, quality) per call: the two photos differ in size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rdeic_codec.cli import main
from rdeic_codec.evaluation import baselines
from rdeic_codec.evaluation.cache import CACHE_FORMAT, BaselineCache, pixels_sha256
from rdeic_codec.model import RDEICModel, save_model
from rdeic_codec.profiles import get_profile

from test_eval import write_photos  # the same synthetic photos as the eval tests

BASELINE_FIELDS = ("codec", "target_bpp", "reachable", "min_bpp", "setting", "bytes", "bpp", "psnr",
                   "ms_ssim", "niqe", "encode_s", "decode_s", "file")


def _tiny_model(folder: Path, gain: float = 2.0, control_seed: int | None = None) -> str:
    """The test model of tests/test_eval.py; ``gain`` moves its rates, ``control_seed`` changes
    only its decoder (the control module's zero convolutions), so its files stay the same."""
    torch.manual_seed(0)
    model = RDEICModel(get_profile("tiny"))
    with torch.no_grad():
        model.compression.log_gain += gain
        if control_seed is not None:
            torch.manual_seed(control_seed)
            for conv in [*model.control.enc_zero_convs, model.control.middle_zero_conv, *model.control.dec_zero_convs]:
                torch.nn.init.normal_(conv.weight, std=0.05)
    save_model(model, str(folder), name="tiny-test")
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """'a': the base model; 'b': a different decoder, same files; 'c': other rates."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared
    root = tmp_path_factory.mktemp("models")
    yield {"a": _tiny_model(root / "a"), "b": _tiny_model(root / "b", control_seed=1),
           "c": _tiny_model(root / "c", gain=2.4)}
    torch.set_num_threads(before)


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_photos(tmp_path / "photos")


@pytest.fixture
def jpeg_calls(monkeypatch) -> list[tuple]:
    """(photo (W, H), quality) of every JPEG encode from here on."""
    calls = []
    encode = baselines.JpegCodec._encode

    def counted(self, image, setting, tmp):
        calls.append((image.size, setting))
        return encode(self, image, setting, tmp)

    monkeypatch.setattr(baselines.JpegCodec, "_encode", counted)
    return calls


def _eval(photos: Path, model: str, out: Path, *extra) -> dict:
    """One ``rdeic eval`` run with JPEG; returns results.json (and checks the printed cache line)."""
    res = CliRunner().invoke(main, ["eval", str(photos), "--lambda", "0.1,2", "--steps", "1", "--baselines", "jpeg",
                                    "-o", str(out), "--model", model, "--device", "cpu", "--threads", "1", *extra])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads((out / "results.json").read_text())
    c = doc["meta"]["baseline_cache"]
    assert f"Baseline results: {c['from_cache']} from the cache, {c['computed']} computed" in res.output
    return doc


def _baseline_rows(doc) -> dict:
    return {(r["image"], r["lambda"]): r for r in doc["rows"] if r["codec"] == "jpeg"}


def test_second_model_reuses_every_baseline_result(tmp_path, models, photos, jpeg_calls):
    cache = tmp_path / "cache"
    first = _eval(photos, models["a"], tmp_path / "a", "--cache", cache)
    assert jpeg_calls and first["meta"]["baseline_cache"]["computed"] == 4
    assert first["meta"]["baseline_cache"]["encodes"] == len(jpeg_calls)
    assert len(list(cache.glob("jpeg-*.json"))) == 2  # one entry per photo

    jpeg_calls.clear()
    second = _eval(photos, models["b"], tmp_path / "b", "--cache", cache)
    assert second["meta"]["model_id"] != first["meta"]["model_id"]
    rdeic = [(r["bpp"], r["psnr"]) for d in (first, second) for r in d["rows"] if r["codec"] == "rdeic"]
    # Model b is another model: the same files, decoded differently.
    assert rdeic[:4] != rdeic[4:] and [b for b, _ in rdeic[:4]] == [b for b, _ in rdeic[4:]]
    assert jpeg_calls == []  # no baseline encode at all
    assert second["meta"]["baseline_cache"] == {**first["meta"]["baseline_cache"], "from_cache": 4, "computed": 0,
                                               "encodes": 0}
    rows_a, rows_b = _baseline_rows(first), _baseline_rows(second)
    assert rows_a.keys() == rows_b.keys() and sum(r["reachable"] for r in rows_a.values()) == 2
    for key, row in rows_b.items():
        assert row["from_cache"] is True and rows_a[key]["from_cache"] is False
        assert {f: row[f] for f in BASELINE_FIELDS} == {f: rows_a[key][f] for f in BASELINE_FIELDS}
        if row["reachable"]:  # the report's file is the stored one, and its crop was written
            assert (tmp_path / "b" / row["file"]).read_bytes() == (tmp_path / "a" / row["file"]).read_bytes()
            assert (tmp_path / "b" / row["crop"]).is_file()
    assert "4 from the cache, 0 computed" in (tmp_path / "b" / "index.html").read_text()


def test_other_rates_encode_only_settings_never_tried(tmp_path, models, photos, jpeg_calls):
    cache = tmp_path / "cache"
    first = _eval(photos, models["a"], tmp_path / "a", "--cache", cache)
    tried = set(jpeg_calls)
    jpeg_calls.clear()
    other = _eval(photos, models["c"], tmp_path / "c", "--cache", cache)
    targets = lambda doc: sorted(r["target_bpp"] for r in _baseline_rows(doc).values())  # noqa: E731
    assert targets(other) != targets(first)
    assert len(set(jpeg_calls)) == len(jpeg_calls) and not tried & set(jpeg_calls)
    # Where both runs chose the same quality for a photo, the numbers are the stored ones.
    for key, row in _baseline_rows(other).items():
        before = _baseline_rows(first)[key]
        if row["reachable"] and before["reachable"] and row["setting"] == before["setting"]:
            assert (row["bytes"], row["psnr"], row["niqe"]) == (before["bytes"], before["psnr"], before["niqe"])


def test_changed_photo_misses_the_cache(tmp_path, models, photos, jpeg_calls):
    cache = tmp_path / "cache"
    _eval(photos, models["a"], tmp_path / "a", "--cache", cache)
    jpeg_calls.clear()
    changed = write_photos(tmp_path / "changed")
    with Image.open(changed / "b_portrait.png") as im:
        pixels = np.array(im)
    pixels[0, 0] ^= 1  # one pixel, one bit
    Image.fromarray(pixels).save(changed / "b_portrait.png")
    doc = _eval(changed, models["a"], tmp_path / "b", "--cache", cache)
    assert jpeg_calls and {size for size, _ in jpeg_calls} == {(96, 128)}  # only b_portrait (W x H)
    assert doc["meta"]["baseline_cache"]["from_cache"] == 2 and doc["meta"]["baseline_cache"]["computed"] == 2


def test_changed_tool_version_misses_the_cache(tmp_path, models, photos, jpeg_calls, monkeypatch):
    cache = tmp_path / "cache"
    first = _eval(photos, models["a"], tmp_path / "a", "--cache", cache)
    jpeg_calls.clear()
    monkeypatch.setattr(baselines.JpegCodec, "version", lambda self: "Pillow 0.0-other")
    doc = _eval(photos, models["a"], tmp_path / "b", "--cache", cache)
    assert len(jpeg_calls) == first["meta"]["baseline_cache"]["encodes"]
    assert doc["meta"]["baseline_cache"]["computed"] == 4
    assert len(list(cache.glob("jpeg-*.json"))) == 4  # the old version's entries stay beside the new ones


def test_corrupt_entries_are_recomputed(tmp_path, models, photos, jpeg_calls):
    cache = tmp_path / "cache"
    first = _eval(photos, models["a"], tmp_path / "a", "--cache", cache)
    entries = sorted(cache.glob("jpeg-*.json"))
    entries[0].write_text(entries[0].read_text()[:100])  # cut short, as by a full disk
    doc = json.loads(entries[1].read_text())
    doc["settings"]["1.0"]["bpp"] = "fast"  # valid JSON, wrong content
    entries[1].write_text(json.dumps(doc))
    jpeg_calls.clear()
    second = _eval(photos, models["a"], tmp_path / "b", "--cache", cache)
    assert len(jpeg_calls) == first["meta"]["baseline_cache"]["encodes"]
    assert second["meta"]["baseline_cache"]["unreadable_entries"] == 2
    assert {f: r["psnr"] for f, r in _baseline_rows(second).items()} == \
        {f: r["psnr"] for f, r in _baseline_rows(first).items()}
    jpeg_calls.clear()  # the entries were written again, whole
    third = _eval(photos, models["a"], tmp_path / "c", "--cache", cache)
    assert jpeg_calls == [] and third["meta"]["baseline_cache"]["unreadable_entries"] == 0
    assert not list(cache.glob(".*.tmp"))  # no temporary file left behind


def test_default_folder_and_no_cache(tmp_path, models, photos, jpeg_calls, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    doc = _eval(photos, models["a"], tmp_path / "a")
    assert doc["meta"]["baseline_cache"]["dir"] == str(tmp_path / "xdg" / "rdeic" / "eval")
    assert len(list((tmp_path / "xdg" / "rdeic" / "eval").glob("jpeg-*.json"))) == 2
    jpeg_calls.clear()
    doc = _eval(photos, models["a"], tmp_path / "b", "--no-cache")
    assert jpeg_calls and doc["meta"]["baseline_cache"]["dir"] is None
    assert doc["meta"]["baseline_cache"]["computed"] == 4
    assert "no cache" in (tmp_path / "b" / "index.html").read_text()
    res = CliRunner().invoke(main, ["eval", str(photos), "-o", str(tmp_path / "c"), "--model", models["a"],
                                    "--cache", str(tmp_path / "x"), "--no-cache"])
    assert res.exit_code == 2 and "not both" in res.output


def test_entry_key_and_file_name():
    pixels = np.zeros((4, 5, 3), np.uint8)
    digest = pixels_sha256(pixels)
    assert digest != pixels_sha256(np.zeros((5, 4, 3), np.uint8))  # the shape counts
    key = BaselineCache.make_key(digest, "avif", {"speed": 4}, "1.0 (aom v3)", "10.0")
    assert key["format"] == CACHE_FORMAT
    path = BaselineCache("/c").path(key)
    assert path.parent == Path("/c") and path.name.startswith("avif-") and path.suffix == ".json"
    assert path != BaselineCache("/c").path({**key, "tool_version": "1.1 (aom v3)"})
    entry = BaselineCache(None).load(key)  # no cache: always empty, nothing written
    entry.settings["63.0"], entry.changed = {"bytes": 1, "bpp": 0.1, "encode_s": 0, "decode_s": 0}, True
    BaselineCache(None).save(entry)
    assert not os.path.exists("/c")
