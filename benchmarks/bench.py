"""`make bench`: encode and decode time and peak memory on one 768×512 photo, CPU, shipped model.

Each measurement runs in a fresh process so that peak memory (ru_maxrss) belongs to that command.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PHOTO = os.environ.get("BENCH_IMAGE", os.path.join(ROOT, "..", "shared", "data", "valid", "gb82_city.png"))


def child(kind: str, arg: str) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from rdeic_codec import codec
    from rdeic_codec.model import load_model

    model = load_model(os.environ.get("RDEIC_MODEL"), "cpu")
    if kind == "encode":
        img = Image.open(PHOTO).convert("RGB")
        img = img.resize((768, 512), Image.LANCZOS) if img.size != (768, 512) else img
        pixels = np.asarray(img)
        codec.encode(model, pixels, 0.25)  # warm-up
        t0 = time.perf_counter()
        result = codec.encode(model, pixels, 0.25)
        seconds = time.perf_counter() - t0
        with open(arg, "wb") as f:
            f.write(result.data)
        extra = {"bpp": round(result.bpp, 4)}
    else:
        steps = int(kind.split("-")[1])
        data = open(arg, "rb").read()
        codec.decode(model, data, steps=steps)
        t0 = time.perf_counter()
        codec.decode(model, data, steps=steps)
        seconds = time.perf_counter() - t0
        extra = {"steps": steps}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"what": kind, "seconds": round(seconds, 3), "peak_mb": round(peak), "threads": torch.get_num_threads(), **extra}))


def main() -> None:
    rdc = "/tmp/rdeic-bench.rdc"
    print(f"rdeic benchmark: 768x512 photo ({os.path.basename(PHOTO)}), CPU, lambda 0.25")
    for kind in ("encode", "decode-2", "decode-5"):
        out = subprocess.run([sys.executable, __file__, kind, rdc], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        tail = f", {r['bpp']} bpp" if "bpp" in r else ""
        print(f"  {kind:9s} {r['seconds']:7.3f} s  peak {r['peak_mb']:5d} MB  ({r['threads']} threads{tail})")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        child(sys.argv[1], sys.argv[2])
    else:
        main()
