"""`make demo`'s picture: the original, rdeic's reconstruction and AVIF at the same bytes, side by side.

    python tools/demo_compare.py ORIGINAL FILE.rdc DECODED.png -o compare.png

AVIF gets the largest file not exceeding the .rdc file's size (rdeic_codec.evaluation.baselines).
Where even AVIF's coarsest quantizer is larger, AVIF on the half-size image (``avif-half``) is
tried; where avifenc is not installed (tools/install-baselines.sh installs it), the picture has two
panels and says why.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rdeic_codec.evaluation.baselines import find_close, get_codec  # noqa: E402
from rdeic_codec.imageio import load_image  # noqa: E402

LABEL_HEIGHT = 28


def avif_at(original: Image.Image, num_bytes: int) -> tuple[np.ndarray | None, str]:
    """AVIF's reconstruction at no more than ``num_bytes``, and a caption (or None and the reason)."""
    target = 8 * num_bytes / (original.width * original.height)
    for name in ("avif", "avif-half"):
        codec = get_codec(name)
        if not codec.available():
            return None, "AVIF: avifenc not installed (tools/install-baselines.sh)"
        close = find_close(codec, original, target)
        if close.reachable:
            enc = close.encoded
            label = "AVIF" if name == "avif" else "AVIF at half size"
            return enc.decoded, f"{label} {enc.num_bytes} bytes, {enc.bpp:.3f} bpp"
    return None, f"AVIF: its smallest file is larger than {num_bytes} bytes"


def panel(pixels: np.ndarray, caption: str, font) -> Image.Image:
    h, w = pixels.shape[:2]
    out = Image.new("RGB", (w, h + LABEL_HEIGHT), "white")
    out.paste(Image.fromarray(pixels), (0, 0))
    ImageDraw.Draw(out).text((6, h + 6), caption, fill="black", font=font)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original")
    parser.add_argument("rdc")
    parser.add_argument("decoded")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    # The original as the codec saw it (orientation applied, converted to sRGB).
    original = load_image(args.original).pixels
    decoded = np.asarray(Image.open(args.decoded).convert("RGB"))
    num_bytes = os.path.getsize(args.rdc)
    h, w = original.shape[:2]
    bpp = 8 * num_bytes / (w * h)
    avif, avif_caption = avif_at(Image.fromarray(original), num_bytes)
    font = ImageFont.load_default(size=16)
    panels = [panel(original, f"original {w}x{h}", font),
              panel(decoded, f"rdeic {num_bytes} bytes, {bpp:.3f} bpp", font)]
    if avif is not None:
        panels.append(panel(avif, avif_caption, font))
    gap = 8
    sheet = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + gap
    sheet.save(args.output)
    print(f"side by side: {args.output}" + ("" if avif is not None else f" ({avif_caption})"))


if __name__ == "__main__":
    main()
