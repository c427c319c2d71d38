"""`make bench`: encode and decode time and peak memory on one 768×512 photo, on the CPU.

Two models:

* ``small``: the shipped default model (or ``$RDEIC_MODEL``); encode, decode with 2 and 5 steps.
* ``size``: ``rdeic encode --bpp`` (the largest file not over a target, a λ search) against one plain
  encode, on the small model: seconds, probes and how many times slower.
* ``batch``: 24 photos (crops of the photo) encoded and decoded in one ``rdeic`` run with ``-o OUTDIR``
  against 24 ``rdeic`` processes, one per file, as a shell loop would (``$BENCH_BATCH`` files).
* ``paper``: the paper's scale (SD 2.1-base UNet and VAE, the authors' compression and control
  modules). ``$BENCH_PAPER_MODEL`` names a converted model directory (``rdeic convert``); without it, a
  directory of the same shapes with random weights is written once to ``$BENCH_PAPER_DIR``
  (default ``/tmp/rdeic-bench-paper``, about 2.1 GB). Time and memory depend on the shapes, not the
  values. Encode, and decode with 2 steps (the authors' fast setting).

* ``refine``: ``rdeic encode --refine N`` on the small model for N = 0, 10 and 25 (one process each, after a
  plain warm-up encode): seconds, peak memory, the file's bpp and the PSNR and MS-SSIM of its z_c
  (``--steps 0``), the part refinement changes.

* ``sizes``: the small model on synthetic photo-like images of 0.4, 6 and 24 megapixels (drawn once
  into ``$BENCH_IMAGE_DIR``, default ``/tmp/rdeic-bench-images``): seconds per megapixel and peak
  memory of encode and of decode with 2 steps, which tiling keeps bounded (``rdeic_codec/tiled.py``),
  and the PSNR in 32-px bands along the tile borders against the whole image's (seams would lower
  it). One run each; the 24 MP runs take minutes on a small CPU.

Each measurement runs in a fresh process, so that its peak memory (ru_maxrss) belongs to that command
and includes loading the model (``load``: the process after loading alone). The small model is timed
after one warm-up run; the paper model, whose runs take minutes on a small CPU, once.

For the small model, whole ``rdeic`` processes are timed too (median of 3, as a user runs them): the
wall time beside the coding time the command prints, and what is left (interpreter, imports, model
loading, reading and writing files) against ``python -c "import torch"`` timed in the same run. The
goal: that rest at most 1.5 times the torch import.

    python benchmarks/bench.py [small] [size] [batch] [paper] [sizes] [refine]
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PHOTO = os.environ.get("BENCH_IMAGE", os.path.join(ROOT, "samples", "gb82_city.png"))
PAPER_DIR = os.environ.get("BENCH_PAPER_DIR", "/tmp/rdeic-bench-paper")
PAPER_LAMBDA = 2.0
PLAN = {
    "small": {"runs": ("load", "encode", "decode-2", "decode-5"), "warm_up": True},
    "size": {"runs": ("size",), "warm_up": True},
    "batch": {},
    "paper": {"runs": ("load", "encode", "decode-2"), "warm_up": False},
    "sizes": {"runs": ("encode", "decode-2"), "warm_up": False},
    "refine": {"runs": ("refine-0", "refine-10", "refine-25"), "warm_up": True},
}
WHOLE_RUNS = 3
RDEIC = os.path.join(ROOT, "bin", "rdeic")
IMAGE_DIR = os.environ.get("BENCH_IMAGE_DIR", "/tmp/rdeic-bench-images")
SIZES = {"0.4": (768, 512), "6": (3000, 2000), "24": (6000, 4000)}  # megapixels: (width, height)
SIZES_LAMBDA = 0.25


def synthetic_photo(width: int, height: int, seed: int = 0):
    """A photo-like test image: overlapping shapes of muted colours (edges at every scale), a light
    gradient and multi-octave 1/f-like texture. Deterministic for a given size and seed."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    base = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(60, 200, 3)))
    draw = ImageDraw.Draw(base)
    scale = (width * height) ** 0.5
    for _ in range(int(150 + 400 * width * height / 1e6)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = scale * np.exp(rng.uniform(np.log(0.003), np.log(0.12)))
        color = tuple(int(v) for v in 0.45 * rng.integers(0, 256, 3) + 0.55 * rng.integers(40, 220))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r * rng.uniform(0.3, 1), x + r, y + r], fill=color)
        else:
            draw.polygon([(x + r * np.cos(a), y + r * np.sin(a)) for a in np.sort(rng.uniform(0, 2 * np.pi, 5))],
                         fill=color)
    img = np.asarray(base.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
    yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None, None]
    img = img * (1.0 - 0.25 * yy) + 20 * np.float32([0.2, 0.5, 1.0]) * (yy < 0)  # light from above
    for k in range(9):
        cell = 2**k
        field = rng.normal(0, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
        up = np.asarray(Image.fromarray(field, "F").resize((width, height), Image.BICUBIC))
        img += (1.5 * cell**0.45) * up[..., None] * np.float32([1.0, 0.95, 0.9])
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def sized_image(mp: str) -> str:
    path = os.path.join(IMAGE_DIR, f"synthetic-{mp}mp.png")
    if not os.path.exists(path):
        os.makedirs(IMAGE_DIR, exist_ok=True)
        synthetic_photo(*SIZES[mp]).save(path + ".tmp.png")
        os.replace(path + ".tmp.png", path)
    return path


def band_psnr(decoded, original, rows, cols, half: int = 16) -> tuple[float, float]:
    """(PSNR of the whole image, PSNR within ``2·half``-px bands centred on the given rows and columns)."""
    import numpy as np

    err = ((decoded.astype(np.float32) - original.astype(np.float32)) ** 2).mean(axis=2)
    band = np.zeros(err.shape, dtype=bool)
    for r in rows:
        band[max(r - half, 0) : r + half] = True
    for c in cols:
        band[:, max(c - half, 0) : c + half] = True
    whole = 10 * np.log10(255**2 / err.mean())
    return whole, (10 * np.log10(255**2 / err[band].mean()) if band.any() else float("nan"))


def size_child(kind: str, image_path: str, rdc: str) -> None:
    """One encode or decode of a large image; peak memory is read before any evaluation allocates."""
    import numpy as np
    import torch
    from PIL import Image

    from rdeic_codec import codec, tiled
    from rdeic_codec.model import load_model

    model = load_model(os.environ.get("RDEIC_MODEL"), "cpu")
    if kind == "encode":
        pixels = np.asarray(Image.open(image_path).convert("RGB"))
        t0, c0 = time.perf_counter(), time.process_time()
        result = codec.encode(model, pixels, SIZES_LAMBDA)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(rdc, "wb") as f:
            f.write(result.data)
        extra = {"bpp": round(result.bpp, 4), "megapixels": result.width * result.height / 1e6}
    else:
        data = open(rdc, "rb").read()
        t0, c0 = time.perf_counter(), time.process_time()
        decoded = codec.decode(model, data, steps=2, max_pixels=1 << 40)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        h, w = decoded.shape[:2]
        whole, bands = band_psnr(decoded, np.asarray(Image.open(image_path).convert("RGB")), *tiled.seams(model, h, w))
        extra = {"psnr": round(float(whole), 2), "seam_psnr": round(float(bands), 2), "megapixels": w * h / 1e6}
    print(json.dumps({"what": kind, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_mb": round(peak),
                      "threads": torch.get_num_threads(), **extra}))


def sizes() -> None:
    print(f"rdeic benchmark, small model ({os.environ.get('RDEIC_MODEL') or 'shipped default'}) on synthetic "
          f"photos, lambda {SIZES_LAMBDA}, CPU, one run each; decode with 2 steps", flush=True)
    for mp, (w, h) in SIZES.items():
        image = sized_image(mp)
        rdc = f"/tmp/rdeic-bench-{mp}mp.rdc"
        for kind in PLAN["sizes"]["runs"]:
            out = subprocess.run([sys.executable, __file__, "--size-child", kind, image, rdc],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{mp} MP {kind} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            tail = (f"{r['bpp']} bpp" if kind == "encode" else
                    f"PSNR {r['psnr']} dB, in 32-px bands on tile borders {r['seam_psnr']} dB")
            # CPU seconds as well: on a shared machine they move less with the load than wall time.
            print(f"  {w}x{h} ({r['megapixels']:.1f} MP) {kind:8s} {r['seconds']:8.2f} s "
                  f"{r['seconds'] / r['megapixels']:6.2f} s/MP (CPU {r['cpu_seconds'] / r['megapixels']:.2f} s/MP)  "
                  f"peak {r['peak_mb']:5d} MB  "
                  f"({r['threads']} threads, {tail})", flush=True)


def model_dir(name: str) -> str | None:
    if name in ("small", "size", "batch", "refine"):
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
    save_model(model, tmp, name="rdeic-paper-random-bench", extra={"lambda": PAPER_LAMBDA}, dtype="float32")
    os.replace(tmp, folder)


def child(kind: str, rdc: str, folder: str | None, warm_up: bool) -> None:
    import numpy as np
    import torch

    from rdeic_codec import codec
    from rdeic_codec.model import COMPONENTS, ENCODER_COMPONENTS, load_model

    t_load = time.perf_counter()
    model = load_model(folder, "cpu", parts=ENCODER_COMPONENTS if kind in ("encode", "size") else COMPONENTS)
    load_seconds = time.perf_counter() - t_load
    lam = model.config.get("lambda") or 0.25
    if kind == "size":
        print(json.dumps(size_search(model, np.asarray(bench_photo()))))
        return
    if kind == "load":
        seconds, extra = load_seconds, {}
    elif kind.startswith("refine-"):
        from rdeic_codec.evaluation.metrics import ms_ssim, psnr

        pixels = np.asarray(bench_photo())
        codec.encode(model, pixels, lam)  # warm-up: lazy imports, the float64 entropy path
        t0 = time.perf_counter()
        result = codec.encode(model, pixels, lam, refine=int(kind.split("-")[1]))
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the encode's, before decoding
        decoded = codec.decode(model, result.data, steps=0)
        print(json.dumps({"what": kind, "seconds": round(seconds, 2), "peak_mb": round(peak),
                          "threads": torch.get_num_threads(), "bpp": round(result.bpp, 4), "lambda": lam,
                          "psnr": round(psnr(pixels, decoded), 2), "ms_ssim": round(ms_ssim(pixels, decoded), 4)}))
        return
    elif kind == "encode":
        pixels = np.asarray(bench_photo())
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
    print(json.dumps({"what": kind, "seconds": round(seconds, 3), "load_seconds": round(load_seconds, 2),
                      "peak_mb": round(peak), "threads": torch.get_num_threads(), **extra}))


def bench_photo():
    from PIL import Image

    img = Image.open(PHOTO).convert("RGB")
    return img.resize((768, 512), Image.LANCZOS) if img.size != (768, 512) else img


def _timed(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return seconds, out.stderr


def whole_processes(folder: str | None) -> None:
    """Median wall time of whole ``rdeic`` commands, their own coding time, and ``import torch``."""
    tmp = tempfile.mkdtemp(prefix="rdeic-bench-")
    photo, rdc, png = (os.path.join(tmp, n) for n in ("photo.png", "photo.rdc", "back.png"))
    bench_photo().save(photo)
    model = ["--model", folder] if folder else []
    commands = {
        "rdeic encode": [sys.executable, RDEIC, "encode", photo, rdc, "-f", *model],
        "rdeic decode --steps 5": [sys.executable, RDEIC, "decode", rdc, png, "-f", "--steps", "5", *model],
    }
    torch_runs = []
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(WHOLE_RUNS):  # interleaved, so that a change in machine load hits every command alike
        torch_runs.append(_timed([sys.executable, "-c", "import torch"])[0])
        for name, args in commands.items():
            wall, stderr = _timed(args)
            coding = float(re.findall(r"(?:encode|decode) ([0-9.]+) s", stderr)[-1])
            runs[name].append((wall, coding))
    t_torch = statistics.median(torch_runs)
    print(f"  whole processes, median of {WHOLE_RUNS} (rest = wall - coding: interpreter, imports, model load, "
          f"files):", flush=True)
    print(f"  python -c 'import torch'  {t_torch:6.2f} s")
    for name, values in runs.items():
        wall = statistics.median(v[0] for v in values)
        coding = statistics.median(v[1] for v in values)
        rest = statistics.median(v[0] - v[1] for v in values)
        print(f"  {name:24s}  {wall:6.2f} s  (coding {coding:.2f} s, rest {rest:.2f} s = "
              f"{rest / t_torch:.2f} x import torch; goal <= 1.5)", flush=True)


def size_search(model, pixels) -> dict:
    """A plain encode against --bpp targets (their search runs the VAE encoder and g_a once)."""
    from rdeic_codec import codec, target

    codec.encode(model, pixels, 0.25)  # warm-up
    t0 = time.perf_counter()
    codec.encode(model, pixels, 0.25)
    plain = time.perf_counter() - t0
    rows = []
    for bpp in (0.03, 0.045, 0.06):
        t0 = time.perf_counter()
        result, found = target.encode_at_rate(model, pixels, bpp=bpp)
        rows.append({"bpp_target": bpp, "bytes": len(result.data), "target_bytes": found.target_bytes,
                     "lambda": result.lam, "probes": len(found.probes), "seconds": round(time.perf_counter() - t0, 3)})
    return {"what": "size", "plain_seconds": round(plain, 3), "targets": rows}


def batch_bench(count: int) -> None:
    """``count`` files in one rdeic run (-o OUTDIR) against one rdeic process per file."""
    import tempfile

    from PIL import Image

    rdeic = [sys.executable, os.path.join(ROOT, "bin", "rdeic")]
    model = ["--model", model_dir("batch")] if model_dir("batch") else []
    photo = Image.open(PHOTO).convert("RGB")
    with tempfile.TemporaryDirectory(prefix="rdeic-bench-batch-") as tmp:
        inputs = []
        for i in range(count):  # different 256×256 crops: photo-like content of one size
            x = (i * 97) % max(photo.width - 256, 1)
            y = (i * 61) % max(photo.height - 256, 1)
            inputs.append(os.path.join(tmp, f"photo{i:02d}.png"))
            photo.crop((x, y, x + 256, y + 256)).save(inputs[-1])
        print(f"rdeic benchmark, batch: {count} photos of 256x256 ({os.path.basename(PHOTO)} crops), CPU, "
              f"one run with -o OUTDIR against {count} processes", flush=True)
        rdcs = [os.path.join(tmp, "each", f"photo{i:02d}.rdc") for i in range(count)]
        os.makedirs(os.path.join(tmp, "each"))
        runs = {
            "encode": ([rdeic + ["encode", *inputs, "-o", os.path.join(tmp, "one"), "-q", *model]],
                       [rdeic + ["encode", src, dst, "-q", *model] for src, dst in zip(inputs, rdcs)]),
            "decode-2": ([rdeic + ["decode", *rdcs, "-o", os.path.join(tmp, "one-rec"), "-q", "--steps", "2", *model]],
                         [rdeic + ["decode", rdc, rdc[:-4] + ".png", "-q", "--steps", "2", *model] for rdc in rdcs]),
        }
        for kind, (one_run, per_file) in runs.items():
            seconds = []
            for commands in (per_file, one_run):  # per-file first: its .rdc files feed the decodes
                t0 = time.perf_counter()
                for cmd in commands:
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        sys.exit(f"batch {kind} failed:\n{out.stderr[-2000:]}")
                seconds.append(time.perf_counter() - t0)
            print(f"  {kind:9s} {count} processes {seconds[0]:7.1f} s   one run {seconds[1]:7.1f} s   "
                  f"({seconds[0] / seconds[1]:.1f}x faster, {seconds[1] / count:.2f} s per file)", flush=True)


def main(names: list[str]) -> None:
    for name in names:
        if name == "batch":
            batch_bench(int(os.environ.get("BENCH_BATCH", "24")))
            continue
        if name == "sizes":
            sizes()
            continue
        folder = model_dir(name)
        if name == "paper" and folder == PAPER_DIR and not os.path.isdir(PAPER_DIR):
            print(f"writing a random-weight paper-scale model to {PAPER_DIR} (once) ...", flush=True)
            write_random_paper_model(PAPER_DIR)
        plan = PLAN[name]
        rdc = f"/tmp/rdeic-bench-{name}.rdc"
        timing = "after a warm-up run" if plan["warm_up"] else "one run"
        what = "random weights of the paper's shapes" if folder == PAPER_DIR else folder or "shipped default"
        title = {"size": "small model, --bpp targets", "refine": "small model, encoder refinement"}.get(name, f"{name} model")
        print(f"rdeic benchmark, {title} ({what}): 768x512 photo "
              f"({os.path.basename(PHOTO)}), CPU, {timing}", flush=True)
        for kind in plan["runs"]:
            args = [sys.executable, __file__, "--child", kind, rdc, folder or "", "1" if plan["warm_up"] else "0"]
            out = subprocess.run(args, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{name} {kind} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if kind == "size":
                for t in r["targets"]:
                    ratio = t["seconds"] / r["plain_seconds"]
                    print(f"  --bpp {t['bpp_target']:<6g} {t['seconds']:8.3f} s  {t['bytes']} of {t['target_bytes']} "
                          f"bytes at lambda {t['lambda']:.4g}, {t['probes']} probes: {ratio:.1f}x a plain encode "
                          f"({r['plain_seconds']:.3f} s)", flush=True)
                continue
            tail = f", {r['bpp']} bpp at lambda {r['lambda']:g}" if "bpp" in r else ""
            if kind.startswith("refine-"):
                print(f"  --refine {kind.split('-')[1]:3s} {r['seconds']:8.2f} s  peak {r['peak_mb']:6d} MB  "
                      f"{r['bpp']} bpp at lambda {r['lambda']:g}, z_c {r['psnr']} dB / MS-SSIM {r['ms_ssim']} "
                      f"({r['threads']} threads)", flush=True)
                continue
            if kind == "load":
                print(f"  {kind:9s} {r['seconds']:8.3f} s  peak {r['peak_mb']:6d} MB  (all networks, in-process; "
                      f"{r['threads']} threads)", flush=True)
                continue
            print(f"  {kind:9s} {r['seconds']:8.3f} s  peak {r['peak_mb']:6d} MB  "
                  f"(model load {r['load_seconds']} s, {r['threads']} threads{tail})", flush=True)
        if name == "small":
            whole_processes(folder)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--size-child":
        size_child(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4] or None, sys.argv[5] == "1")
    else:
        chosen = sys.argv[1:] or list(PLAN)
        if bad := [n for n in chosen if n not in PLAN]:
            sys.exit(f"unknown benchmark {bad[0]!r}: choose from {', '.join(PLAN)}")
        main(chosen)
