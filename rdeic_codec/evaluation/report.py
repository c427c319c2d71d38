"""The report of ``rdeic eval``: results.json, results.csv, rate-quality plots, index.html.

* ``results.csv``: one row per image x codec x setting (columns: :func:`.runner.row_fields`). For
  rdeic the setting is (λ, steps); for a baseline it is the .rdc file it is matched to (``lambda``)
  and ``setting`` is the baseline's own knob value. Unreachable baselines have ``reachable`` false,
  ``min_bpp`` and empty metrics.
* ``results.json``: ``meta`` (configuration, versions), ``status`` ('running', 'complete',
  'interrupted' or 'failed'), ``images``, the same ``rows``, and ``summary``: per codec and setting, the mean over
  finished images of bpp, each metric and the times, with ``n_reachable`` / ``n_unreachable``.
  PSNR is averaged in dB per image (as CompressAI does), not from a mean MSE. Non-finite numbers
  (PSNR of an identical image) are written as null.
* ``rd_<metric>.png``: mean bpp against the mean metric, one curve per codec (rdeic: per step
  count); a point with unreachable images is left out and the legend says how many.
* ``index.html``: per image and λ, centre crops of the original, rdeic and the matched baselines
  (crops for display; every number is measured on the whole image), and how many baseline results
  came from the baseline cache.
* ``summary.md``: a line saying what was measured (whole images), then the averages as a Markdown
  table, by λ, for READMEs and model cards.

Plots use matplotlib's Agg canvas, imported only when plots are drawn. Everything is written to a
temporary file and renamed, so an interrupted run never leaves a half-written report file.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

from . import registry
from .runner import Results, row_fields

SUMMARY_NUMBERS = ("bpp", "encode_s", "decode_s")


def _atomic_write(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0)  # mkstemp creates 0600; reports are for sharing, so use what open() would
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _clean(value):
    """JSON-safe: non-finite floats become None, containers are cleaned recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def series_label(codec: str, steps) -> str:
    if codec == "rdeic":
        return f"rdeic, {steps} step{'' if steps == 1 else 's'}"
    return codec


def _mean(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def summarize(results: Results) -> list[dict]:
    """Per codec and setting (codec, steps, λ): means over the finished images."""
    finished = {im["name"] for im in results.images if im.get("finished")}
    metric_names = [m.name for m in registry.image_metrics()]
    groups: dict[tuple, list[dict]] = {}
    for row in results.rows:
        if row["image"] in finished:
            groups.setdefault((row["codec"], row["steps"], row["lambda"]), []).append(row)
    summary = []
    for (codec, steps, lam), rows in groups.items():
        ok = [r for r in rows if r["reachable"]]
        entry = {"codec": codec, "steps": steps, "lambda": lam, "series": series_label(codec, steps),
                 "n_images": len(rows), "n_reachable": len(ok), "n_unreachable": len(rows) - len(ok)}
        if codec != "rdeic":
            entry["mean_target_bpp"] = _mean([r["target_bpp"] for r in rows])
        for name in (*SUMMARY_NUMBERS, *metric_names):
            entry[name] = _mean([r[name] for r in ok])
        entry.update(results.set_values.get((codec, steps, lam), {}))
        summary.append(entry)
    return summary


def to_json(results: Results) -> str:
    doc = {"status": results.status, "meta": results.meta, "images": results.images,
           "rows": results.rows, "summary": summarize(results)}
    return json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n"


def to_csv(results: Results) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=row_fields(), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in results.rows:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                         for k, v in row.items()})
    return buf.getvalue()


def measured_line(results: Results) -> str:
    """One sentence on what the numbers are over: whole images, how many, how rates are counted."""
    n = sum(1 for im in results.images if im.get("finished"))
    sizes = sorted({(im["width"], im["height"]) for im in results.images if im.get("finished")})
    shown = ", ".join(f"{w}×{h}" for w, h in sizes[:4]) + (", …" if len(sizes) > 4 else "")
    refine = results.meta.get("refine") or 0
    refined = f"; rdeic's files encoded with --refine {refine}" if refine else ""
    return (f"Means over {n} whole photo{'s' * (n != 1)}{f' ({shown})' if sizes else ''}, each coded at its "
            f"full size, neither cropped nor resized; bpp = 8 × file bytes / the photo's pixels{refined}.")


def cache_line(results: Results) -> str:
    """How many baseline results the baseline cache supplied and how many were computed."""
    c = results.meta.get("baseline_cache") or {}
    where = f"cache {c['dir']}" if c.get("dir") else "no cache"
    line = (f"Baseline results: {c.get('from_cache', 0)} from the cache, {c.get('computed', 0)} computed "
            f"({c.get('encodes', 0)} encodes; {where})")
    if c.get("unreadable_entries"):
        line += f"; {c['unreadable_entries']} unreadable cache entries recomputed"
    return line


def to_markdown(results: Results) -> str:
    """What was measured (a line), then the summary as a Markdown table: per λ, rdeic's step counts,
    then each baseline at that rate."""
    metrics = [m.name for m in registry.image_metrics()] + [m.name for m in registry.set_metrics()]
    head = ["codec", "λ", "images", "bpp", *metrics, "enc s", "dec s"]
    lines = [measured_line(results), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {c: i for i, c in enumerate(results.meta.get("baselines", []))}
    rank = lambda e: (e["lambda"], e["codec"] != "rdeic", order.get(e["codec"], len(order)), e["steps"] or 0)  # noqa: E731
    for e in sorted(summarize(results), key=rank):
        images = f"{e['n_reachable']}/{e['n_images']}"
        if e["n_reachable"] == 0:
            cells = [f"cannot reach {_fmt(e.get('mean_target_bpp'))}"] + ["–"] * (len(metrics) + 2)
        else:
            cells = [_fmt(e["bpp"]), *(_fmt(e.get(m)) for m in metrics), f"{e['encode_s']:.2f}", f"{e['decode_s']:.2f}"]
        lines.append("| " + " | ".join([e["series"], f"{e['lambda']:g}", images, *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_tables(results: Results, out_dir: Path) -> None:
    """results.json, results.csv and summary.md (cheap; rewritten after every row)."""
    _atomic_write(out_dir / "results.json", to_json(results))
    _atomic_write(out_dir / "results.csv", to_csv(results))
    _atomic_write(out_dir / "summary.md", to_markdown(results))


def write_all(results: Results, out_dir: Path) -> None:
    """Tables, plots and index.html."""
    write_tables(results, out_dir)
    plots = write_plots(results, out_dir)
    _atomic_write(out_dir / "index.html", to_html(results, plots))


# -- plots -------------------------------------------------------------------------------------
def write_plots(results: Results, out_dir: Path) -> list[str]:
    """One PNG per metric (image and set metrics); returns their file names."""
    summary = summarize(results)
    if not summary:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_images = sum(1 for im in results.images if im.get("finished"))
    names = []
    for metric in (*registry.image_metrics(), *registry.set_metrics()):
        series: dict[str, list] = {}
        omitted: dict[str, int] = {}
        for entry in summary:
            label = entry["series"]
            series.setdefault(label, [])
            value = entry.get(metric.name)
            if entry["n_unreachable"] or value is None or entry["bpp"] is None:
                omitted[label] = omitted.get(label, 0) + 1
            else:
                series[label].append((entry["bpp"], value))
        if not any(series.values()):
            continue
        fig = Figure(figsize=(7, 4.8), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for label, points in series.items():
            k = omitted.get(label, 0)
            note = f" ({k} point{'s' * (k > 1)} left out: unreachable)" if k else ""
            style = {"marker": "o", "linewidth": 2} if label.startswith("rdeic") else \
                {"marker": "s", "linestyle": "--", "linewidth": 1}
            if points:
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, label=label + note, **style)
            elif note:
                ax.plot([], [], label=label + note)
        if isinstance(metric, registry.ImageMetric) and not metric.reference:
            ref = _mean([im.get(f"original_{metric.name}") for im in results.images if im.get("finished")])
            if ref is not None:
                ax.axhline(ref, color="gray", linestyle="--", linewidth=1, label="originals")
        ax.set_xlabel("bits per pixel (file size)")
        ax.set_ylabel(metric.label or metric.name)
        ax.set_title(f"{metric.label or metric.name} vs rate, mean over {n_images} whole photo(s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        name = f"rd_{metric.name}.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        _atomic_write(out_dir / name, buf.getvalue())
        names.append(name)
    return names


# -- html --------------------------------------------------------------------------------------
def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _caption(row: dict) -> str:
    metrics = " · ".join(f"{m.name} {_fmt(row.get(m.name))}" for m in registry.image_metrics())
    return f"{_fmt(row['bpp'])} bpp · {metrics}"


def _cell(title: str, crop: str | None, caption: str) -> str:
    img = f'<img src="{html.escape(quote(crop))}" alt="{html.escape(title)}">' if crop else \
        '<div class="missing">unreachable</div>'
    return f"<figure>{img}<figcaption><b>{html.escape(title)}</b><br>{html.escape(caption)}</figcaption></figure>"


def _summary_table(summary: list[dict]) -> str:
    cols = ["series", "lambda", "n_reachable", "n_unreachable", "mean_target_bpp", "bpp",
            *(m.name for m in registry.image_metrics()), *(m.name for m in registry.set_metrics()),
            "encode_s", "decode_s"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(e.get(c)))}</td>" for c in cols) + "</tr>"
                   for e in summary)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = (
    "body{font-family:sans-serif;margin:1em 2em} figure{display:inline-block;margin:4px;vertical-align:top}"
    " figcaption{font-size:12px;max-width:256px} img{image-rendering:pixelated}"
    " table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:2px 6px}"
    " .missing{width:128px;height:128px;background:#eee;display:flex;align-items:center;"
    "justify-content:center;color:#888} .lam{border-top:1px solid #ccc;padding-top:4px}"
)


def to_html(results: Results, plots: list[str]) -> str:
    meta = results.meta
    crop = int(meta.get("crop", 256))
    intro = (f"Status: <b>{html.escape(results.status)}</b>. Model {html.escape(str(meta.get('model_name')))} "
             f"({html.escape(str(meta.get('model_id')))}), device {html.escape(str(meta.get('device')))}, "
             f"detail {html.escape(_fmt(meta.get('detail')))}. {html.escape(measured_line(results))} "
             "Baselines use the largest file not exceeding each .rdc file. The pictures below are centre "
             f"{crop}×{crop} px crops of the whole decoded photos, for display only. "
             f"{html.escape(cache_line(results))}. "
             "Data: <a href='results.json'>results.json</a>, <a href='results.csv'>results.csv</a>.")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rdeic evaluation</title>",
        f"<style>{_CSS}</style></head><body><h1>rdeic evaluation on whole photos</h1>",
        f"<p>{intro}</p>",
        "<h2>Averages over the whole photos</h2>", _summary_table(summarize(results)),
        "".join(f'<p><img src="{quote(p)}" alt="{html.escape(p)}"></p>' for p in plots),
    ]
    rows_by_image: dict[str, list[dict]] = {}
    for row in results.rows:
        rows_by_image.setdefault(row["image"], []).append(row)
    for im in results.images:
        rows = rows_by_image.get(im["name"], [])
        parts.append(f"<h2>{html.escape(im['name'])} ({im['width']}×{im['height']})</h2>")
        for lam in dict.fromkeys(r["lambda"] for r in rows):
            at = [r for r in rows if r["lambda"] == lam]
            rdc = next((r for r in at if r["codec"] == "rdeic"), None)
            head = f"λ = {lam:g}" + (f": rdeic file {rdc['bpp']:.4f} bpp" if rdc else "")
            cells = [_cell("original", im["crop"], f"{im['width']}×{im['height']}")]
            for r in at:
                if r["codec"] == "rdeic":
                    cells.append(_cell(series_label("rdeic", r["steps"]), r["crop"], _caption(r)))
                elif r["reachable"]:
                    cells.append(_cell(f"{r['codec']} ({_fmt(r['setting'])})", r["crop"], _caption(r)))
                else:
                    cells.append(_cell(r["codec"], None, f"unreachable: smallest file {_fmt(r['min_bpp'])} bpp"))
            parts.append(f"<div class='lam'><p>{html.escape(head)}</p>{''.join(cells)}</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
