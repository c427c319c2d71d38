"""Compare two `rdeic eval` reports at matched rate, and each against the better AVIF at no more bytes.

    python tools/matched_rate.py NEW/results.json OLD/results.json [--steps 0,2,5]

For every rdeic point (steps, λ) of NEW: its mean bpp and metrics, OLD's curve for the same step count
interpolated (linearly in log bpp) at that bpp, the difference, and, where NEW's report has AVIF rows,
the mean over photos of the better of ``avif`` and ``avif-half`` (by MS-SSIM, per photo) at no more
bytes than NEW's file. A point outside OLD's rates is extrapolated from its two nearest points and
marked ``*``. Means are over the photos of each report (PSNR averaged in dB, as the report does).
"""

from __future__ import annotations

import argparse
import json
import math

METRICS = ("psnr", "ms_ssim", "niqe")


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def curve(report: dict, steps: int) -> list[tuple[float, dict]]:
    """(mean bpp, {metric: mean}) of the rdeic points with this step count, by rate."""
    points = [(e["bpp"], {m: e.get(m) for m in METRICS}) for e in report["summary"]
              if e["codec"] == "rdeic" and e.get("steps") == steps and e.get("bpp")]
    return sorted(points, key=lambda p: p[0])


def interpolate(points, bpp: float, metric: str) -> tuple[float, bool]:
    """The metric at ``bpp`` on the curve, linear in log bpp; True when extrapolated."""
    xs = [math.log(p[0]) for p in points]
    x = math.log(bpp)
    k = next((i for i in range(1, len(xs)) if xs[i] >= x), len(xs) - 1)
    k = max(k, 1)
    (x0, y0), (x1, y1) = (xs[k - 1], points[k - 1][1][metric]), (xs[k], points[k][1][metric])
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0), not xs[0] <= x <= xs[-1]


def best_avif(report: dict, lam: float) -> dict | None:
    """Mean over photos of the better of AVIF and AVIF at half size (by MS-SSIM) at no more bytes than
    rdeic's file for λ; None if the report has no AVIF rows for it."""
    by_image: dict = {}
    for r in report["rows"]:
        if r["codec"] in ("avif", "avif-half") and r.get("lambda") == lam and r.get("reachable") and r.get("ms_ssim"):
            best = by_image.get(r["image"])
            if best is None or r["ms_ssim"] > best["ms_ssim"]:
                by_image[r["image"]] = r
    if not by_image:
        return None
    rows = list(by_image.values())
    return {"bpp": sum(r["bpp"] for r in rows) / len(rows), "n": len(rows),
            **{m: sum(r[m] for r in rows) / len(rows) for m in METRICS if all(r.get(m) is not None for r in rows)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new")
    parser.add_argument("old", nargs="?")
    parser.add_argument("--steps", default="0,2,5")
    args = parser.parse_args()
    new = load(args.new)
    old = load(args.old) if args.old else None
    print("| steps | λ | bpp | PSNR / MS-SSIM / NIQE | old at that bpp | Δ PSNR / MS-SSIM / NIQE | best AVIF: bpp, PSNR / MS-SSIM / NIQE |")
    print("|---|---|---|---|---|---|---|")
    for steps in (int(s) for s in args.steps.split(",")):
        for bpp, values in curve(new, steps):
            lam = next(e["lambda"] for e in new["summary"] if e["codec"] == "rdeic" and e.get("steps") == steps
                       and e.get("bpp") == bpp)
            cells = [str(steps), f"{lam:g}", f"{bpp:.4f}", " / ".join(_f(values[m]) for m in METRICS)]
            ref = curve(old, steps) if old else []
            if len(ref) >= 2:
                got = [interpolate(ref, bpp, m) for m in METRICS]
                mark = "*" if any(e for _, e in got) else ""
                cells.append(" / ".join(_f(v) for v, _ in got) + mark)
                cells.append(" / ".join(f"{values[m] - v:+.3f}" for m, (v, _) in zip(METRICS, got)))
            else:
                cells += ["–", "–"]
            avif = best_avif(new, lam)
            cells.append(f"{avif['bpp']:.4f}, " + " / ".join(_f(avif.get(m)) for m in METRICS) if avif else "–")
            print("| " + " | ".join(cells) + " |")


def _f(value) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
