"""Tests of ``rdeic eval`` (rdeic_codec.evaluation.runner / report and the CLI command).

A tiny random model stands in for a trained one; its rate gains are raised (log gain + 2) so that
at λ = 2 its files (~0.9 bpp on these images) are within reach of every baseline, while at λ = 0.1
(~0.16 bpp) none of them gets that low: both the matched and the unreachable paths run.
Baselines whose command-line tools are missing are left out of the run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rdeic_codec import codec as rdc
from rdeic_codec.cli import main
from rdeic_codec.evaluation import baselines, registry
from rdeic_codec.evaluation.metrics import ms_ssim, psnr
from rdeic_codec.evaluation.niqe import niqe
from rdeic_codec.model import RDEICModel, load_model, save_model
from rdeic_codec.profiles import get_profile

LAMBDAS = (0.1, 2.0)
STEPS = (1, 2)
SIZES = {"a_landscape.png": (96, 128), "b_portrait.png": (128, 96)}  # (H, W); NIQE needs >= 96x96


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """The default baseline cache ($XDG_CACHE_HOME/rdeic/eval) in a temporary folder, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; tiny models gain nothing from threads
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = RDEICModel(get_profile("tiny"))
    with torch.no_grad():
        model.compression.log_gain += 2.0
    folder = str(tmp_path_factory.mktemp("model"))
    save_model(model, folder, name="tiny-test")
    return folder


def write_photos(folder: Path) -> Path:
    """The synthetic photos of :data:`SIZES` in ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([128 + 100 * np.sin(xx / 7.0 + i), 128 + 80 * np.cos(yy / 5.0 + xx / 11.0),
                        (2 * xx + yy) % 256], axis=-1)
        img = img + np.random.default_rng(i).normal(0, 8, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = write_photos(tmp_path_factory.mktemp("images"))
    (folder / "notes.txt").write_text("not an image; ignored")
    return folder


def _available_baselines() -> list[str]:
    return [name for name in baselines.CODECS if baselines.get_codec(name).available()]


def _eval(args, **kwargs):
    return CliRunner().invoke(main, ["eval", *map(str, args)], **kwargs)


@pytest.fixture(scope="module")
def report(tmp_path_factory, model_dir, image_dir, one_thread):
    out = tmp_path_factory.mktemp("report")
    codecs = _available_baselines()
    res = _eval([image_dir, "--lambda", ",".join(map(str, LAMBDAS)), "--steps", ",".join(map(str, STEPS)),
                 "--baselines", ",".join(codecs) or "none", "-o", out, "--model", model_dir,
                 "--device", "cpu", "--threads", "1", "-q", "--force"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    with open(out / "results.json") as f:
        doc = json.load(f)
    return out, doc, codecs


def _row(doc, image, codec, lam, steps=None):
    [row] = [r for r in doc["rows"]
             if r["image"] == image and r["codec"] == codec and r["lambda"] == lam and r["steps"] == steps]
    return row


def test_numbers_match_an_independent_computation(report, model_dir, image_dir):
    out, doc, codecs = report
    name = "a_landscape.png"
    with Image.open(image_dir / name) as im:
        original = np.asarray(im.convert("RGB"))
    h, w = original.shape[:2]
    model = load_model(model_dir, "cpu")
    for lam in LAMBDAS:
        data = rdc.encode(model, original, lam).data
        for steps in STEPS:
            row = _row(doc, name, "rdeic", lam, steps)
            on_disk = (out / row["file"]).read_bytes()
            assert on_disk == data  # the file is the real bitstream (encoding is deterministic)
            assert row["bytes"] == len(data)
            assert row["bpp"] == pytest.approx(8 * len(data) / (h * w), rel=1e-12)
            decoded = rdc.decode(model, data, steps=steps)
            assert row["psnr"] == pytest.approx(psnr(original, decoded), rel=1e-9)
            assert row["ms_ssim"] == pytest.approx(ms_ssim(original, decoded), rel=1e-9)
            assert row["niqe"] == pytest.approx(niqe(decoded), rel=1e-9)
            assert row["encode_s"] > 0 and row["decode_s"] > 0
    assert doc["images"][0]["original_niqe"] == pytest.approx(niqe(original), rel=1e-9)
    for codec_name in codecs:  # matched baselines: the written file, decoded again, measured again
        row = _row(doc, name, codec_name, 2.0)
        assert row["reachable"]
        data = (out / row["file"]).read_bytes()
        assert row["bpp"] == pytest.approx(8 * len(data) / (h * w), rel=1e-12)
        decoded = baselines.get_codec(codec_name).decode(data)
        assert row["psnr"] == pytest.approx(psnr(original, decoded), rel=1e-9)
    # Averages are the means of the rows.
    [entry] = [e for e in doc["summary"] if e["codec"] == "rdeic" and e["steps"] == 2 and e["lambda"] == 2.0]
    rows = [_row(doc, n, "rdeic", 2.0, 2) for n in SIZES]
    assert entry["n_images"] == 2
    assert entry["bpp"] == pytest.approx(np.mean([r["bpp"] for r in rows]))
    assert entry["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]))


def test_baselines_never_exceed_their_target_and_unreachable_is_reported(report):
    out, doc, codecs = report
    if not codecs:
        pytest.skip("no baseline codec available")
    reachable = unreachable = 0
    for row in doc["rows"]:
        if row["codec"] == "rdeic":
            continue
        rdeic = _row(doc, row["image"], "rdeic", row["lambda"], STEPS[0])
        assert row["target_bpp"] == rdeic["bpp"]  # matched to that image's .rdc file at that λ
        if row["reachable"]:
            reachable += 1
            size = (out / row["file"]).stat().st_size
            assert row["bytes"] == size
            assert row["bpp"] <= row["target_bpp"]
            assert row["min_bpp"] <= row["bpp"]
        else:
            unreachable += 1
            assert row["min_bpp"] > row["target_bpp"]
            assert row["bpp"] is None and row["psnr"] is None and row["file"] is None
    assert reachable and unreachable  # the fixture model is set up to exercise both
    if "jpeg" in codecs:  # the largest fitting setting: one quality step up overshoots
        row = _row(doc, "a_landscape.png", "jpeg", 2.0)
        with Image.open(Path(doc["images"][0]["path"])) as im:
            bigger = baselines.get_codec("jpeg").roundtrip(im.convert("RGB"), row["setting"] + 1)
        assert bigger.bpp > row["target_bpp"]


def test_csv_has_one_row_per_image_codec_setting(report):
    out, doc, codecs = report
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_image = len(LAMBDAS) * (len(STEPS) + len(codecs))
    assert len(rows) == len(SIZES) * per_image == len(doc["rows"])
    keys = {(r["image"], r["codec"], r["lambda"], r["steps"]) for r in rows}
    assert len(keys) == len(rows)
    assert {r["image"] for r in rows} == set(SIZES)
    for col in ("bpp", "psnr", "ms_ssim", "niqe", "encode_s", "decode_s", "reachable", "target_bpp"):
        assert col in rows[0]
    assert doc["status"] == "complete" and all(im["finished"] for im in doc["images"])


def test_markdown_summary_has_every_average(report):
    out, doc, _ = report
    lines = (out / "summary.md").read_text().splitlines()
    assert lines[0].startswith("Means over 2 whole photos (96×128, 128×96), each coded at its full size")
    assert lines[2].startswith("| codec | λ | images | bpp | psnr | ms_ssim | niqe")
    rows = [line.strip("| ").split(" | ") for line in lines[4:]]
    assert len(rows) == len(doc["summary"])
    for entry in doc["summary"]:
        [row] = [r for r in rows if r[0] == entry["series"] and float(r[1]) == entry["lambda"]]
        assert row[2] == f"{entry['n_reachable']}/{entry['n_images']}"
        if entry["n_reachable"]:
            assert float(row[3]) == pytest.approx(entry["bpp"], rel=1e-3)
            assert float(row[4]) == pytest.approx(entry["psnr"], rel=1e-3)
        else:
            assert row[3].startswith("cannot reach")


def test_html_references_existing_files_and_plots_exist(report):
    out, doc, _ = report
    page = (out / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"href='([^']+)'", page)
    assert refs
    for ref in refs:
        assert (out / ref).is_file(), ref
    for row in doc["rows"]:
        if row["reachable"]:
            assert row["crop"] in refs
            with Image.open(out / row["crop"]) as crop:
                assert crop.format == "PNG" and max(crop.size) <= 256
    for im in doc["images"]:
        assert im["crop"] in refs
    for metric in ("psnr", "ms_ssim", "niqe"):
        assert (out / f"rd_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"rd_{metric}.png" in refs
    # Readable like any file the user writes (the umask decides), not private to the writer.
    mask = os.umask(0)
    os.umask(mask)
    for name in ("index.html", "results.json", "results.csv", "summary.md"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name


def test_interrupt_keeps_finished_images(tmp_path, model_dir, image_dir, one_thread, monkeypatch):
    from rdeic_codec.evaluation import runner

    calls = []
    original = runner.Runner._image

    def image_then_interrupt(self, *args):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(runner.Runner, "_image", image_then_interrupt)
    out = tmp_path / "rep"
    res = _eval([image_dir, "--lambda", "2", "--steps", "1", "--baselines", "jpeg", "-o", out,
                 "--model", model_dir, "--device", "cpu", "-q"])
    assert res.exit_code == 130
    assert "interrupted" in res.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"] == "interrupted"
    assert {r["image"] for r in doc["rows"]} == {"a_landscape.png"} and len(doc["rows"]) == 2
    assert (out / "index.html").exists() and (out / "results.csv").exists()


def test_registered_metrics_flow_into_the_report(tmp_path, model_dir, image_dir, one_thread, monkeypatch):
    class Count:
        def __init__(self):
            self.n = 0

        def add(self, original, reconstruction):
            self.n += 1

        def result(self):
            return float(self.n)

    mae = registry.ImageMetric("mae", lambda x, y: float(np.abs(x.astype(int) - y).mean()),
                               higher_is_better=False, label="MAE")
    monkeypatch.setitem(registry.METRICS, "mae", mae)
    monkeypatch.setitem(registry.METRICS, "count", registry.SetMetric("count", Count, higher_is_better=True))
    out = tmp_path / "rep"
    res = _eval([image_dir, "--lambda", "2", "--steps", "1", "--baselines", "none", "-o", out,
                 "--model", model_dir, "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert all(r["mae"] > 0 for r in doc["rows"])
    [entry] = doc["summary"]
    assert entry["count"] == 2.0 and entry["mae"] > 0
    assert (out / "rd_mae.png").exists() and (out / "rd_count.png").exists()
    assert "mae" in (out / "results.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("args, code, message", [
    (["--baselines", "bpg"], 2, "unknown codec"),
    (["--steps", "11"], 2, "0..10"),
    (["--lambda", "x"], 2, "comma-separated"),
    (["--lambda", "5"], 1, "outside this model's range"),
])
def test_user_errors_are_one_line(tmp_path, model_dir, image_dir, args, code, message):
    res = _eval([image_dir, "-o", tmp_path / "rep", "--model", model_dir, "--device", "cpu", "-q", *args])
    assert res.exit_code == code
    assert message in res.output
    assert "Traceback" not in res.output


def test_refuses_empty_folder_and_existing_report(tmp_path, model_dir, report):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _eval([empty, "-o", tmp_path / "rep", "--model", model_dir])
    assert res.exit_code == 1 and "holds no images" in res.output
    out, _, _ = report
    res = _eval([empty, "-o", out, "--model", model_dir])
    assert res.exit_code == 1 and "--force" in res.output
