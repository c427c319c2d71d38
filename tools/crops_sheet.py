"""The model card's side-by-side crops: original, rdeic's z_c alone and with 2 and 5 steps, AVIF at the same bytes.

    python tools/crops_sheet.py samples/gb82_*.png --lambda 0.1,0.5,2 -o models/rdeic-small/results/crops.png

One row per image and λ: a crop of the original, of rdeic's decode at each of ``--steps`` (default 0, 2
and 5: z_c decoded alone, then 2 and 5 diffusion steps; the same file), and of the better of AVIF and AVIF at half size (the one with the higher PSNR among those that
fit) at no more bytes than the .rdc file. Captions give bytes, bpp and PSNR of the whole image.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rdeic_codec import codec  # noqa: E402
from rdeic_codec.evaluation.baselines import find_close, get_codec  # noqa: E402
from rdeic_codec.evaluation.metrics import psnr  # noqa: E402
from rdeic_codec.imageio import load_image  # noqa: E402
from rdeic_codec.model import load_model  # noqa: E402

LABEL = 34


def best_avif(original: np.ndarray, num_bytes: int):
    """(decoded, caption) of the better AVIF variant at ≤ num_bytes, or (None, reason)."""
    target = 8 * num_bytes / (original.shape[0] * original.shape[1])
    best = None
    for name in ("avif", "avif-half"):
        c = get_codec(name)
        if not c.available():
            return None, "avifenc not installed"
        close = find_close(c, Image.fromarray(original), target)
        if close.reachable:
            enc = close.encoded
            score = psnr(original, enc.decoded)
            if best is None or score > best[0]:
                label = "AVIF" if name == "avif" else "AVIF half size"
                best = (score, enc.decoded, f"{label} {enc.num_bytes} B {enc.bpp:.3f} bpp {score:.2f} dB")
    return (best[1], best[2]) if best else (None, f"AVIF cannot reach {num_bytes} bytes")


def tile(pixels, box, caption, font):
    crop = pixels[box[1] : box[3], box[0] : box[2]]
    out = Image.new("RGB", (crop.shape[1], crop.shape[0] + LABEL), "white")
    out.paste(Image.fromarray(crop), (0, 0))
    ImageDraw.Draw(out).multiline_text((4, crop.shape[0] + 2), caption, fill="black", font=font, spacing=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--lambda", dest="lams", default="0.1,0.5,2")
    ap.add_argument("--model", default=None)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--steps", default="0,2,5", help="decoder step counts, one column each (0: z_c alone)")
    ap.add_argument("--refine", type=int, default=0, help="encoder refinement steps (rdeic encode --refine)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    model = load_model(args.model)
    font = ImageFont.load_default(size=13)
    rows = []
    for path in args.images:
        original = load_image(path).pixels
        h, w = original.shape[:2]
        s = min(args.crop, h, w)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        for lam in (float(v) for v in args.lams.split(",")):
            data = codec.encode(model, original, lam, refine=args.refine).data
            bpp = 8 * len(data) / (w * h)
            tiles = [tile(original, box, f"{os.path.basename(path)}\noriginal", font)]
            for steps in (int(v) for v in args.steps.split(",")):
                rec = codec.decode(model, data, steps=steps)
                what = ("z_c alone" if steps == 0 else f"{steps} steps") + (f", refined {args.refine}" if args.refine else "")
                tiles.append(tile(rec, box, f"rdeic lambda {lam:g}, {what}\n{len(data)} B {bpp:.3f} bpp "
                                            f"{psnr(original, rec):.2f} dB", font))
            avif, caption = best_avif(original, len(data))
            tiles.append(tile(avif if avif is not None else np.full_like(original, 255), box, caption, font))
            rows.append(tiles)
            print(f"{path} λ={lam:g}: {len(data)} bytes, {bpp:.4f} bpp; {caption}", flush=True)
    gap = 4
    width = sum(t.width for t in rows[0]) + gap * (len(rows[0]) - 1)
    height = sum(r[0].height for r in rows) + gap * (len(rows) - 1)
    sheet = Image.new("RGB", (width, height), "white")
    y = 0
    for r in rows:
        x = 0
        for t in r:
            sheet.paste(t, (x, y))
            x += t.width + gap
        y += r[0].height + gap
    sheet.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
