"""What ``--detail`` does: decode the same files at several s and report sharpness, PSNR and NIQE.

    python tools/detail_sweep.py ../shared/data/valid [--model DIR] [--images 4] [--lambda 0.5] [--steps 5]

Sharpness is the mean absolute luma difference between neighbouring pixels (higher: sharper).
"""

import argparse
import glob
import os

import numpy as np
import torch
from PIL import Image

from rdeic_codec import codec
from rdeic_codec.evaluation.metrics import psnr
from rdeic_codec.evaluation.niqe import niqe
from rdeic_codec.model import load_model

DETAILS = (0.0, 0.5, 1.0, 1.5, 2.0)


def sharpness(rgb: np.ndarray) -> float:
    y = rgb.astype(float) @ [0.299, 0.587, 0.114]
    return float(np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--lambda", dest="lam", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    paths = sorted(glob.glob(os.path.join(args.folder, "*.png")))[: args.images]
    rows = {s: [] for s in DETAILS}
    originals = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        originals.append(sharpness(image))
        data = codec.encode(model, image, args.lam).data
        for s in DETAILS:
            rec = codec.decode(model, data, steps=args.steps, detail=s)
            rows[s].append((sharpness(rec), psnr(image, rec), niqe(rec)))
    print(f"{len(paths)} images, λ = {args.lam}, {args.steps} steps; originals' sharpness {np.mean(originals):.2f}")
    for s in DETAILS:
        sharp, p, n = np.mean(rows[s], axis=0)
        print(f"detail {s:g}: sharpness {sharp:.2f}  PSNR {p:.2f}  NIQE {n:.2f}")


if __name__ == "__main__":
    main()
