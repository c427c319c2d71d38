"""`make bench`: encode and decode time and peak memory on one 768×512 photo, on the CPU.

Two models:

* ``small``: the shipped default model (or ``$RDEIC_MODEL``); encode, decode with 2 and 5 steps.
* ``paper``: the paper's scale (SD 2.1-base UNet and VAE, the authors' compression and control
  modules). ``$BENCH_PAPER_MODEL`` names a converted model directory (``rdeic convert``); without it, a
  directory of the same shapes with random weights is written once to ``$BENCH_PAPER_DIR``
  (default ``/tmp/rdeic-bench-paper``, about 2.1 GB). Time and memory depend on the shapes, not the
  values. Encode, and decode with 2 steps (the authors' fast setting).

Each measurement runs in a fresh process, so that its peak memory (ru_maxrss) belongs to that command
and includes loading the model. The small model is timed after one warm-up run; the paper model, whose
runs take minutes on a small CPU, once.

    python benchmarks/bench.py [small] [paper]
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
PHOTO = os.environ.get("BENCH_IMAGE", os.path.join(ROOT, "samples", "gb82_city.png"))
PAPER_DIR = os.environ.get("BENCH_PAPER_DIR", "/tmp/rdeic-bench-paper")
PAPER_LAMBDA = 2.0
PLAN = {
    "small": {"runs": ("encode", "decode-2", "decode-5"), "warm_up": True},
    "paper": {"runs": ("encode", "decode-2"), "warm_up": False},
}


def model_dir(name: str) -> str | None:
    if name == "small":
        return os.environ.get("RDEIC_MODEL")  # None: the shipped default
    return os.environ.get("BENCH_PAPER_MODEL") or PAPER_DIR


def write_random_paper_model(folder: str) -> None:
    """A paper-profile model directory with random weights, laid out as ``rdeic convert`` writes one."""
    import torch

    from rdeic_codec.model import RDEICModel, save_model
    from rdeic_codec.profiles import get_profile

    torch.manual_seed(0)
    config = get_profile("paper")
    config["compression"]["lambdas"] = None  # as converted: one model per λ
    with torch.no_grad():
        model = RDEICModel(config)
        model.unet.context.normal_()
    tmp = folder + ".tmp"
    save_model(model, tmp, name="rdeic-paper-random-bench", extra={"lambda": PAPER_LAMBDA})
    os.replace(tmp, folder)


def child(kind: str, rdc: str, folder: str | None, warm_up: bool) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from rdeic_codec import codec
    from rdeic_codec.model import load_model

    t_load = time.perf_counter()
    model = load_model(folder, "cpu")
    load_seconds = time.perf_counter() - t_load
    lam = model.config.get("lambda") or 0.25
    if kind == "encode":
        img = Image.open(PHOTO).convert("RGB")
        img = img.resize((768, 512), Image.LANCZOS) if img.size != (768, 512) else img
        pixels = np.asarray(img)
        if warm_up:
            codec.encode(model, pixels, lam)
        t0 = time.perf_counter()
        result = codec.encode(model, pixels, lam)
        seconds = time.perf_counter() - t0
        with open(rdc, "wb") as f:
            f.write(result.data)
        extra = {"bpp": round(result.bpp, 4), "lambda": lam}
    else:
        steps = int(kind.split("-")[1])
        data = open(rdc, "rb").read()
        if warm_up:
            codec.decode(model, data, steps=steps)
        t0 = time.perf_counter()
        codec.decode(model, data, steps=steps)
        seconds = time.perf_counter() - t0
        extra = {"steps": steps}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"what": kind, "seconds": round(seconds, 3), "load_seconds": round(load_seconds, 1),
                      "peak_mb": round(peak), "threads": torch.get_num_threads(), **extra}))


def main(names: list[str]) -> None:
    for name in names:
        folder = model_dir(name)
        if name == "paper" and folder == PAPER_DIR and not os.path.isdir(PAPER_DIR):
            print(f"writing a random-weight paper-scale model to {PAPER_DIR} (once) ...", flush=True)
            write_random_paper_model(PAPER_DIR)
        plan = PLAN[name]
        rdc = f"/tmp/rdeic-bench-{name}.rdc"
        timing = "after a warm-up run" if plan["warm_up"] else "one run"
        what = "random weights of the paper's shapes" if folder == PAPER_DIR else folder or "shipped default"
        print(f"rdeic benchmark, {name} model ({what}): 768x512 photo "
              f"({os.path.basename(PHOTO)}), CPU, {timing}", flush=True)
        for kind in plan["runs"]:
            args = [sys.executable, __file__, "--child", kind, rdc, folder or "", "1" if plan["warm_up"] else "0"]
            out = subprocess.run(args, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{name} {kind} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            tail = f", {r['bpp']} bpp at lambda {r['lambda']:g}" if "bpp" in r else ""
            print(f"  {kind:9s} {r['seconds']:8.3f} s  peak {r['peak_mb']:6d} MB  "
                  f"(model load {r['load_seconds']} s, {r['threads']} threads{tail})", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4] or None, sys.argv[5] == "1")
    else:
        chosen = sys.argv[1:] or list(PLAN)
        if bad := [n for n in chosen if n not in PLAN]:
            sys.exit(f"unknown benchmark {bad[0]!r}: choose from {', '.join(PLAN)}")
        main(chosen)
