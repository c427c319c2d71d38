"""The evaluation loop of ``rdeic eval``: rdeic against baseline codecs at matched rates.

Each image is coded whole: its file is read (EXIF orientation applied, converted to 8-bit sRGB)
and every codec gets all of its pixels, neither cropped nor resized; the ``crop`` setting is only
the size of the centre crops shown in index.html. For each image, each λ: the image is encoded once
to an ``.rdc`` file (the bitstream does not depend on the step count), then decoded from that file
once per step count. Every rate is 8 * (file size in bytes) / (original pixel count); no rate is
ever estimated from likelihoods.

For each ``.rdc`` file and each baseline codec, :func:`~.baselines.bisect_settings` picks the
setting whose file is the largest not exceeding that file's bpp (each try encoded and decoded,
both timed); the chosen file is written and measured the same way as rdeic's. A baseline that
cannot get down to the target gives a row with ``reachable`` false, its smallest rate and no
metrics. The baseline cache (:mod:`.cache`) keeps every try's rate and times and every chosen
file's metrics per photo, so a later run, of any model, encodes and measures only what it has not
seen: a cached row costs one decode of the stored file, for its crop and any set metric. Its
``from_cache`` column says so; its times are those measured when it was computed.

Results are one row per image x codec x setting (see :data:`ROW_FIELDS`). The tables of the report
(:mod:`.report`) are rewritten after a row when :data:`TABLES_EVERY_S` have passed since the last
write, the whole report (plots, HTML) after an image when :data:`REPORT_EVERY_S` have passed, and
always at the end, Ctrl-C included; so an interrupted run keeps what it finished, and a killed one
what it finished up to a few seconds before.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import registry
from .metrics import ms_ssim_levels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".ppm")
FILE_EXTENSIONS = {"rdeic": ".rdc", "jpeg": ".jpg", "webp": ".webp", "avif": ".avif",
                   "avif-half": ".avifh", "jxl": ".jxl"}
# Columns of a row, before the image metrics (one column each) and the trailing paths.
ROW_FIELDS = ("image", "codec", "steps", "lambda", "setting", "target_bpp", "reachable", "min_bpp",
              "bytes", "bpp")
ROW_TAIL = ("encode_s", "decode_s", "file", "crop", "from_cache")
TABLES_EVERY_S = 5.0  # results.json/csv at most this often during a run (they grow with the run)
REPORT_EVERY_S = 30.0  # plots and index.html at most this often during a run


@dataclass
class EvalSettings:
    """What to run.

    Attributes:
        lambdas: rdeic rate parameters; one .rdc file per image and λ.
        steps: denoising step counts; one decode per .rdc file and count.
        baselines: baseline codec names (:data:`~.baselines.CODECS`), matched to every .rdc file.
        detail: rdeic decoder guidance (1.0 as trained).
        crop: side of the centre crops shown in index.html (display only: images are coded whole).
        cache_dir: the baseline cache folder (:mod:`.cache`); None: no cache.
        refine: encoder refinement steps of every .rdc file (``rdeic encode --refine``; 0: none).
    """

    lambdas: Sequence[float]
    steps: Sequence[int]
    baselines: Sequence[str] = ()
    detail: float = 1.0
    crop: int = 256
    cache_dir: str | os.PathLike | None = None
    refine: int = 0


@dataclass
class Results:
    """Everything the report shows; filled in as the run goes.

    Attributes:
        meta: run configuration and versions (written to results.json as is).
        images: per image: name, width, height, path, crop, no-reference metrics of the original,
            MS-SSIM scales.
        rows: one dict per image x codec x setting, keys :func:`row_fields`.
        set_values: set-metric results, key (codec, steps, lambda) -> {metric name: value}.
        status: 'running', 'complete', 'interrupted' (Ctrl-C) or 'failed' (an error).
    """

    meta: dict
    images: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    set_values: dict = field(default_factory=dict)
    status: str = "running"


def row_fields() -> list[str]:
    """CSV/JSON columns: the fixed ones, one per registered image metric, then times and paths."""
    return [*ROW_FIELDS, *(m.name for m in registry.image_metrics()), *ROW_TAIL]


def list_images(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name, the first ``limit``."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return files[:limit] if limit else files


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The central size x size region (the whole side where the image is smaller)."""
    h, w = pixels.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return pixels[top : top + ch, left : left + cw]


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)


def _rel(path: Path, out_dir: Path) -> str:
    return path.relative_to(out_dir).as_posix()


class Runner:
    """Runs the evaluation of one model on a list of images, writing into ``out_dir``.

    Args:
        model: a loaded RDEIC model.
        out_dir: report folder (created); files go to ``files/<image>/``, crops to ``crops/<image>/``.
        settings: an :class:`EvalSettings`.
        meta: extra run information for results.json.
        progress: show a tqdm bar on stderr (None: only when stderr is a terminal).
    """

    def __init__(self, model, out_dir, settings: EvalSettings, meta: dict | None = None,
                 progress: bool | None = None):
        from .baselines import get_codec
        from .cache import BaselineCache

        self.model = model
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.codecs = {name: get_codec(name) for name in settings.baselines}
        for codec in self.codecs.values():
            codec.require()  # fail before any work, naming the package to install
        self.image_metrics = registry.image_metrics()
        self.set_metrics = registry.set_metrics()
        self.progress = progress
        self.cache = BaselineCache(settings.cache_dir)
        self.results = Results(meta={
            **(meta or {}),
            "lambdas": list(settings.lambdas), "steps": list(settings.steps),
            "baselines": list(settings.baselines), "detail": settings.detail, "crop": settings.crop,
            "refine": settings.refine,
            "baseline_versions": {n: c.version() for n, c in self.codecs.items()},
            "image_metrics": [{"name": m.name, "higher_is_better": m.higher_is_better,
                               "reference": m.reference} for m in self.image_metrics],
            "set_metrics": [{"name": m.name, "higher_is_better": m.higher_is_better}
                            for m in self.set_metrics],
            "coded": "whole images (neither cropped nor resized)",
            # Baseline results (image x codec x rate): reused whole, or computed (an encode or a metric).
            "baseline_cache": {"dir": None if settings.cache_dir is None else str(Path(settings.cache_dir).resolve()),
                               "from_cache": 0, "computed": 0, "encodes": 0, "unreadable_entries": 0},
        })
        self._accumulators: dict = {}
        self._written = {"tables": 0.0, "all": 0.0}  # perf_counter of the last writes

    def _write(self, what: str) -> None:
        """Write the tables or the whole report if its interval has passed."""
        from . import report

        now = time.perf_counter()
        if what == "tables" and now - self._written["tables"] >= TABLES_EVERY_S:
            report.write_tables(self.results, self.out_dir)
            self._written["tables"] = now
        elif what == "all" and now - self._written["all"] >= REPORT_EVERY_S:
            report.write_all(self.results, self.out_dir)
            self._written["all"] = self._written["tables"] = now

    # -- the loop ------------------------------------------------------------------------------
    def run(self, paths: Sequence[Path]) -> Results:
        """Evaluate every image; on Ctrl-C write what is finished (status 'interrupted') and re-raise."""
        from tqdm import tqdm

        from . import report

        s = self.settings
        per_image = len(s.lambdas) * (len(s.steps) + len(s.baselines))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.results.meta["images_planned"] = len(paths)
        bar = tqdm(total=len(paths) * per_image, unit="row", file=sys.stderr, dynamic_ncols=True,
                   disable=None if self.progress is None else not self.progress)
        try:
            self._warm_up()
            stems = Counter(p.stem for p in paths)
            for path in paths:  # folder names in files/ and crops/: the stem, unless two share it
                self._image(path, path.stem if stems[path.stem] == 1 else path.name, bar)
                self._write("all")
            self.results.status = "complete"
        except BaseException as e:
            self.results.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            raise
        finally:
            bar.close()
            self._finish_set_metrics()
            report.write_all(self.results, self.out_dir)
        return self.results

    def _warm_up(self) -> None:
        """One small encode/decode, so that one-time costs (lazy imports, float64 copies of the
        entropy networks, CUDA start-up) are not timed on the first image."""
        from .. import codec as rdc

        lam = min(self.settings.lambdas)
        data = rdc.encode(self.model, np.full((64, 64, 3), 128, np.uint8), lam).data
        rdc.decode(self.model, data, steps=max(self.settings.steps), detail=self.settings.detail)

    def _image(self, path: Path, folder: str, bar) -> None:
        from ..imageio import load_image
        from .cache import pixels_sha256

        pixels = load_image(str(path)).pixels
        h, w = pixels.shape[:2]
        name = path.name
        crop_dir = self.out_dir / "crops" / folder
        info = {"name": name, "path": str(path), "width": w, "height": h, "folder": folder,
                "pixels_sha256": pixels_sha256(pixels), "crop": _rel(crop_dir / "original.png", self.out_dir)}
        _save_png(center_crop(pixels, self.settings.crop), crop_dir / "original.png")
        info["ms_ssim_scales"] = ms_ssim_levels(h, w)
        for m in self.image_metrics:
            if not m.reference:
                info[f"original_{m.name}"] = m(pixels, pixels)
        self.results.images.append(info)
        matched: dict = {}  # (codec, target bpp) -> row values, shared by equal targets
        entries = {c: self._cache_entry(info["pixels_sha256"], c) for c in self.settings.baselines}
        for lam in self.settings.lambdas:
            bar.set_postfix_str(f"{name} rdeic λ={lam:g}", refresh=False)
            rdc_path, target, enc_s = self._encode_rdeic(pixels, folder, lam)
            for steps in self.settings.steps:
                row, decoded = self._decode_rdeic(pixels, name, folder, lam, rdc_path, target, enc_s, steps)
                self._add(row, decoded, pixels, bar)
            for codec_name in self.settings.baselines:
                bar.set_postfix_str(f"{name} {codec_name} ≤ {target:.4f} bpp", refresh=False)
                key = (codec_name, target)
                if key not in matched:
                    matched[key] = self._baseline(pixels, name, folder, codec_name, target, entries[codec_name])
                    self.cache.save(entries[codec_name])  # now, so an interrupted run keeps it
                row, decoded = matched[key]
                self._add({**row, "lambda": lam}, decoded, pixels, bar)
        info["finished"] = True

    def _add(self, row: dict, decoded: np.ndarray | None, pixels: np.ndarray, bar) -> None:
        """Append a row, feed the set metrics its reconstruction (None: unreachable), write the tables."""
        full = {k: None for k in row_fields()}
        full.update(row)
        self.results.rows.append(full)
        if decoded is not None and self.set_metrics:
            key = (full["codec"], full["steps"], full["lambda"])
            accs = self._accumulators.setdefault(key, {m.name: m.new() for m in self.set_metrics})
            for acc in accs.values():
                acc.add(pixels, decoded)
        self._write("tables")
        bar.update(1)

    def _metrics(self, pixels: np.ndarray, decoded: np.ndarray) -> dict:
        return {m.name: m(pixels, decoded) for m in self.image_metrics}

    # -- rdeic ---------------------------------------------------------------------------------
    def _encode_rdeic(self, pixels, folder, lam):
        from .. import codec as rdc
        from ..imageio import write_output

        t0 = time.perf_counter()
        result = rdc.encode(self.model, pixels, lam, refine=self.settings.refine)
        seconds = time.perf_counter() - t0
        path = self.out_dir / "files" / folder / f"rdeic_lambda{lam:g}.rdc"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_output(str(path), result.data)
        h, w = pixels.shape[:2]
        return path, 8.0 * path.stat().st_size / (h * w), seconds

    def _decode_rdeic(self, pixels, name, folder, lam, rdc_path, bpp, enc_s, steps):
        from .. import codec as rdc

        data = rdc_path.read_bytes()
        t0 = time.perf_counter()
        decoded = rdc.decode(self.model, data, steps=steps, detail=self.settings.detail)
        seconds = time.perf_counter() - t0
        crop = self.out_dir / "crops" / folder / f"rdeic_lambda{lam:g}_steps{steps}.png"
        _save_png(center_crop(decoded, self.settings.crop), crop)
        row = {"image": name, "codec": "rdeic", "steps": steps, "lambda": lam, "setting": lam,
               "target_bpp": None, "reachable": True, "min_bpp": None, "bytes": len(data), "bpp": bpp,
               **self._metrics(pixels, decoded), "encode_s": enc_s, "decode_s": seconds,
               "file": _rel(rdc_path, self.out_dir), "crop": _rel(crop, self.out_dir)}
        return row, decoded

    # -- baselines -----------------------------------------------------------------------------
    def _cache_entry(self, digest: str, codec_name: str):
        """The cache entry of one image and baseline (empty without a cache)."""
        import PIL

        codec = self.codecs[codec_name]
        key = self.cache.make_key(digest, codec_name, dict(vars(codec)),
                                  self.results.meta["baseline_versions"][codec_name], PIL.__version__)
        entry = self.cache.load(key)
        self.results.meta["baseline_cache"]["unreadable_entries"] = self.cache.unreadable
        return entry

    def _baseline(self, pixels, name, folder, codec_name, target, entry):
        """Rate-matched baseline: (row without 'lambda', decoded pixels or None).

        Args:
            pixels: the image.
            name: its file name (the row's ``image``).
            folder: its folder name under files/ and crops/.
            codec_name: the baseline.
            target: the rate not to exceed (the .rdc file's bpp).
            entry: the image's :class:`~.cache.Entry` for this baseline; what is computed is added.
        """
        from PIL import Image

        from .baselines import bisect_settings
        from .cache import setting_key

        codec = self.codecs[codec_name]
        image = Image.fromarray(pixels, "RGB")
        made: dict = {}  # setting -> Encoded, the encodes of this call

        def bpp_of(setting: float) -> float:
            record = entry.settings.get(setting_key(setting))
            if record is None:  # never tried on this image: encode (and decode, to check and time it)
                made[setting] = enc = codec.roundtrip(image, setting)
                record = {"bytes": enc.num_bytes, "bpp": enc.bpp, "encode_s": enc.encode_s, "decode_s": enc.decode_s}
                entry.settings[setting_key(setting)] = record
                entry.changed = True
            return record["bpp"]

        chosen, min_bpp = bisect_settings(codec.settings, target, bpp_of)
        row = {"image": name, "codec": codec_name, "steps": None, "target_bpp": target,
               "reachable": chosen is not None, "min_bpp": min_bpp}
        if chosen is None:
            return self._count(row, len(made), measured=False), None
        record = entry.settings[setting_key(chosen)]
        data, decoded = self._chosen_file(codec, image, chosen, record, made, entry)
        missing = [m for m in self.image_metrics if m.name not in record.get("metrics", {})]
        if missing:  # first time this setting is chosen for this image (or a metric was added)
            record.setdefault("metrics", {}).update({m.name: m(pixels, decoded) for m in missing})
            entry.changed = True
        path = self.out_dir / "files" / folder / f"{codec_name}_{chosen:g}{FILE_EXTENSIONS[codec_name]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        h, w = pixels.shape[:2]
        crop = self.out_dir / "crops" / folder / f"{codec_name}_{chosen:g}.png"
        _save_png(center_crop(decoded, self.settings.crop), crop)
        row.update({"setting": chosen, "bytes": len(data), "bpp": 8.0 * path.stat().st_size / (h * w),
                    **{m.name: record["metrics"][m.name] for m in self.image_metrics},
                    "encode_s": record["encode_s"], "decode_s": record["decode_s"],
                    "file": _rel(path, self.out_dir), "crop": _rel(crop, self.out_dir)})
        return self._count(row, len(made), measured=bool(missing)), decoded

    def _chosen_file(self, codec, image, setting, record, made, entry):
        """The chosen setting's file and its decoded pixels: (bytes, uint8 array).

        From this call's encode, else from the file stored in the cache (decoded again: the crop and
        any set metric need the pixels), else (only its rate was known) encoded now.
        """
        import base64

        if setting in made:
            enc = made[setting]
        elif "data" in record:
            data = base64.b64decode(record["data"])
            return data, codec.decode(data)
        else:
            made[setting] = enc = codec.roundtrip(image, setting)
            record.update({"encode_s": enc.encode_s, "decode_s": enc.decode_s})
        record["data"] = base64.b64encode(enc.data).decode("ascii")
        entry.changed = True
        return enc.data, enc.decoded

    def _count(self, row: dict, encodes: int, measured: bool) -> dict:
        """Mark a baseline row as computed or reused, and add it to the run's cache counts.

        Args:
            row: the row (gets ``from_cache``).
            encodes: how many encodes it took.
            measured: whether its metrics were computed (not read from the cache).
        """
        stats = self.results.meta["baseline_cache"]
        computed = encodes > 0 or measured
        stats["computed" if computed else "from_cache"] += 1
        stats["encodes"] += encodes
        row["from_cache"] = not computed
        return row

    def _finish_set_metrics(self) -> None:
        for key, accs in self._accumulators.items():
            self.results.set_values[key] = {name: acc.result() for name, acc in accs.items()}
