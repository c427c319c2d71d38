"""Learning curves of a training run: validation figures against CPU-minutes, per stage.

    python tools/learning_curves.py WORK [LOG ...] -o models/rdeic-small/results/learning_curves

Reads the validation lines the trainer writes (``WORK/<stage>/valid.log``, and any extra log files,
e.g. the console log of a run from before valid.log existed), and writes ``OUT.csv`` (stage, step,
CPU-minutes, metric, value) and ``OUT.png`` (one panel per stage and metric).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import re

LINE = re.compile(r"(?:\[(?P<stage>\w+)\] )?step (?P<step>\d+) valid (?P<body>.*) \((?P<wall>\d+) s, (?P<cpu>[\d.]+) CPU-min\)")
# "psnr 23.59 dB", "eps-mse (t ≤ 299) 0.1234", "λ=0.1: bpp 0.1 mse_zc 0.2 file_bpp 0.03; λ=0.5: ..."
PAIR = re.compile(r"([A-Za-z_][\w-]*(?: \([^)]*\))?) (-?[\d.]+(?:e-?\d+)?)")


def parse(path: str, stage: str | None = None) -> list[dict]:
    rows = []
    with open(path, errors="replace") as f:
        for text in f:
            m = LINE.search(text)
            if not m:
                continue
            name = m["stage"] or stage
            for part in m["body"].split("; "):
                prefix = ""
                if part.startswith("λ="):
                    prefix, part = part.split(": ", 1)
                    prefix += " "
                for key, value in PAIR.findall(part):
                    rows.append({"stage": name, "step": int(m["step"]), "cpu_min": float(m["cpu"]),
                                 "metric": prefix + key, "value": float(value)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work")
    ap.add_argument("logs", nargs="*")
    ap.add_argument("-o", "--output", required=True, help="output path without extension")
    args = ap.parse_args()
    rows = []
    for path in sorted(glob.glob(os.path.join(args.work, "*", "valid.log"))):
        rows += parse(path, os.path.basename(os.path.dirname(path)))
    for path in args.logs:
        rows += parse(path)
    # The same validation may be in a stage's valid.log and in a console log: keep one. A stage
    # restarted at step 0 (a warm restart) repeats step numbers, so CPU-minutes tell the points apart
    # and order them.
    unique = {(r["stage"], r["step"], r["metric"], r["cpu_min"]): r for r in rows}
    rows = sorted(unique.values(), key=lambda r: (r["stage"], r["metric"], r["cpu_min"], r["step"]))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["stage", "step", "cpu_min", "metric", "value"])
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["stage"], r["metric"]) for r in rows})
    cols = 3
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(12, 3 * ((len(panels) + cols - 1) // cols)),
                             squeeze=False)
    for ax, (stage, metric) in zip(axes.flat, panels):
        pts = [(r["cpu_min"], r["value"]) for r in rows if (r["stage"], r["metric"]) == (stage, metric)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(f"{stage}: {metric}", fontsize=9)
        ax.set_xlabel("CPU-minutes")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.output + ".png", dpi=90)
    print(f"{len(rows)} points, {len(panels)} curves → {args.output}.csv, {args.output}.png")


if __name__ == "__main__":
    main()
