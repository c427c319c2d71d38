"""Compare two `rdeic eval` reports at matched rate, and each against the better AVIF at no more bytes.

    python tools/matched_rate.py NEW/results.json OLD/results.json [--steps 0,2,5]

For every rdeic point (steps, λ) of NEW: its mean bpp and metrics, OLD's curve for the same step count
interpolated (linearly in log bpp) at that bpp, the difference, and, where NEW's report has AVIF rows,
the mean over photos of the better of ``avif`` and ``avif-half`` (by MS-SSIM, per photo) at no more
bytes than NEW's file (where AVIF cannot reach every photo, with rdeic's means on the photos it
reaches, to compare on the same photos). A point outside OLD's rates is extrapolated from its two
nearest points and marked ``*``. Means are over the photos of each report (PSNR averaged in dB, as the report does).
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


def mean_metrics(rows: list[dict]) -> dict:
    """Mean of each metric over ``rows`` (those every row has)."""
    return {m: sum(r[m] for r in rows) / len(rows) for m in METRICS if rows and all(r.get(m) is not None for r in rows)}


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
    return {"bpp": sum(r["bpp"] for r in rows) / len(rows), "n": len(rows), "images": set(by_image), **mean_metrics(rows)}


def rdeic_on(report: dict, steps: int, lam: float, images: set) -> tuple[dict, int]:
    """Mean metrics of rdeic's (steps, λ) files over ``images`` only, and how many photos it has in all:
    where AVIF cannot reach every photo, its mean and rdeic's table mean are over different photos."""
    rows = [r for r in report["rows"] if r["codec"] == "rdeic" and r.get("steps") == steps and r.get("lambda") == lam]
    return mean_metrics([r for r in rows if r["image"] in images]), len(rows)


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
            cell = f"{avif['bpp']:.4f}, " + " / ".join(_f(avif.get(m)) for m in METRICS) if avif else "–"
            if avif:
                same, total = rdeic_on(new, steps, lam, avif["images"])
                if avif["n"] < total:  # compare on the same photos: AVIF's mean leaves out those it cannot reach
                    cell += (f" ({avif['n']} of {total} photos; rdeic on them: "
                             + " / ".join(_f(same.get(m)) for m in METRICS) + ")")
            cells.append(cell)
            print("| " + " | ".join(cells) + " |")


def _f(value) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
