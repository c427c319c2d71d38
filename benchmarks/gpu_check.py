"""GPU check: paper-scale speed in float32 and with --half, and files exchanged between CPU and GPU.

On a CUDA machine (the default run):

1. times encode and decode (2 and 5 steps) of one 768×512 image on the GPU, float32 and float16
   (``--half``), each after a warm-up run, beside the paper's RTX 4090 figures (Kodak: encode 0.119 s,
   2-step decode 0.371 s, 5-step decode 0.632 s);
2. encodes on the CPU and decodes on the GPU and on the CPU, then encodes on the GPU and decodes on both:
   each file must entropy-decode to the same symbols (bit-identical ŷ) on both devices, and its pixels
   must agree within rounding (see :func:`compare_pixels`).

The model is ``--model DIR`` (a converted model) or, by default, a model directory of the paper's shapes
with random weights, written once to ``--work`` (time and memory depend on the shapes, not the values).
The image is ``--image`` or a synthetic photo-like one (a GPU machine may have no photos).

``--dry-run`` does all of it on the CPU with the tiny profile and a small image, in seconds: the test
suite runs it, so the script cannot rot where no GPU is available.

    python benchmarks/gpu_check.py [--dry-run] [--model DIR] [--image PNG] [--work DIR] [--repeat N]

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The paper's timings on one RTX 4090 (Kodak, 768×512; method file, section 7): encode, and decode =
# denoising (0.173 s for 2 steps, 0.434 s for 5) + 0.198 s for the rest.
PAPER_4090 = {"encode": 0.119, "decode-2": 0.371, "decode-5": 0.632}
PAPER_LAMBDA = 2.0

# "Same pixels within rounding": a float32 decode on another device differs by float rounding, which
# moves a few 8-bit values by one level; a difference in the decoded symbols moves whole regions.
MAX_MEAN_ABS = 0.25  # levels, over all pixels
MIN_WITHIN_ONE = 0.99  # fraction of pixel values within one level


def compare_pixels(a, b) -> tuple[bool, str]:
    """Whether two decodes of one file agree within rounding, and a line saying by how much."""
    import numpy as np

    if a.shape != b.shape:
        return False, f"shapes differ: {a.shape} vs {b.shape}"
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mean, within, worst = float(d.mean()), float((d <= 1).mean()), int(d.max())
    ok = mean <= MAX_MEAN_ABS and within >= MIN_WITHIN_ONE
    return ok, f"mean |diff| {mean:.4f} levels, {100 * within:.3f}% within 1 level, max {worst}"


def synthetic_image(height: int, width: int):
    """Smooth gradients plus texture, like tests/conftest.py's smooth_image."""
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], axis=2)
    return np.clip(127 + 90 * base + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)


def read_image(path: str | None, height: int, width: int):
    if not path:
        return synthetic_image(height, width)
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB")
    return np.asarray(img.resize((width, height), Image.LANCZOS) if img.size != (width, height) else img)


def write_random_model(folder: str, profile: str) -> None:
    """A model directory of ``profile``'s shapes with random weights, laid out as ``rdeic convert``
    writes one (float32, one λ); the control module's zero convs get weights so that its path matters."""
    import torch

    from rdeic_codec.model import RDEICModel, save_model
    from rdeic_codec.profiles import get_profile

    torch.manual_seed(0)
    config = get_profile(profile)
    config["compression"]["lambdas"] = None
    with torch.no_grad():
        model = RDEICModel(config)
        model.unet.context.normal_()
        ctrl = model.control
        for conv in list(ctrl.enc_zero_convs) + [ctrl.middle_zero_conv] + list(ctrl.dec_zero_convs):
            torch.nn.init.normal_(conv.weight, std=0.01)
    tmp = folder + ".tmp"
    save_model(model, tmp, name=f"rdeic-{profile}-random-gpu-check", extra={"lambda": PAPER_LAMBDA}, dtype="float32")
    os.replace(tmp, folder)


class Timer:
    """Wall time of a call, waiting for the device's queued work."""

    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self, fn, repeat: int):
        fn()  # warm-up: kernel selection, allocator, caches
        times = []
        for _ in range(repeat):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU only, tiny profile, small image")
    parser.add_argument("--model", help="model directory (default: random weights of the paper's shapes)")
    parser.add_argument("--image", help="image to code (default: a synthetic one)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "rdeic-gpu-check"),
                        help="where the random-weight model is written (once)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    args = parser.parse_args(argv)

    import torch

    from rdeic_codec import codec, container
    from rdeic_codec.model import load_model

    if args.dry_run:
        gpu, profile, (height, width), repeat = torch.device("cpu"), "tiny", (64, 96), 1
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run for the CPU rehearsal)", file=sys.stderr)
            return 1
        gpu, profile, (height, width), repeat = torch.device("cuda"), "paper", (512, 768), args.repeat
    cpu = torch.device("cpu")
    folder = args.model
    if folder is None:
        folder = os.path.join(args.work, f"random-{profile}")
        if not os.path.isdir(folder):
            print(f"writing a random-weight {profile}-profile model to {folder} ...", flush=True)
            os.makedirs(args.work, exist_ok=True)
            write_random_model(folder, profile)
    image = read_image(args.image, height, width)
    where = torch.cuda.get_device_name(gpu) if gpu.type == "cuda" else "CPU (dry run: both 'devices' are the CPU)"
    # cuDNN may run float32 convolutions in TF32 on Ampere and later (PyTorch's default): pixel
    # differences between CPU and GPU then include TF32's rounding, not float32's only.
    tf32 = f", TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}" if gpu.type == "cuda" else ""
    print(f"gpu_check: {profile} model {folder}, {width}x{height} image, {where}{tf32}, torch {torch.__version__}",
          flush=True)
    failures = []

    # 1. speed on the GPU, float32 and half.
    rows, two_step = {}, {}
    for half in (False, True):
        t0 = time.perf_counter()
        model = load_model(folder, gpu, half=half)
        load_s = time.perf_counter() - t0
        lam = model.config.get("lambda") or 1.0
        timer = Timer(gpu)
        result, enc_s = timer(lambda m=model: codec.encode(m, image, lam), repeat)
        col = rows.setdefault("load", {})
        col[half] = load_s
        rows.setdefault("encode", {})[half] = enc_s
        for steps in (2, 5):
            pixels, dec_s = timer(lambda m=model, s=steps: codec.decode(m, result.data, steps=s), repeat)
            rows.setdefault(f"decode-{steps}", {})[half] = dec_s
            if steps == 2:
                two_step[half] = (result.data, pixels)
        if gpu.type == "cuda":
            rows.setdefault("peak GPU memory (GiB)", {})[half] = torch.cuda.max_memory_allocated(gpu) / 2**30
            torch.cuda.reset_peak_memory_stats(gpu)
        print(f"  {'half' if half else 'float32'}: {result.bpp:.4f} bpp at lambda {lam:g}", flush=True)
        del model
        if gpu.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n  {'seconds (median of %d)' % repeat:24s} {'float32':>9s} {'--half':>9s} {'paper RTX 4090':>15s}")
    for what, col in rows.items():
        paper = f"{PAPER_4090[what]:15.3f}" if what in PAPER_4090 else f"{'':15s}"
        print(f"  {what:24s} {col[False]:9.3f} {col[True]:9.3f} {paper}")
    if two_step[False][0] == two_step[True][0]:  # the compression module runs in float32 either way
        _, how = compare_pixels(two_step[False][1], two_step[True][1])
        print(f"  --half and float32 encoders wrote the same file; its 2-step decodes differ by: {how}")
    else:
        print("  --half and float32 encoders wrote different files (the float16 VAE encoder rounds differently)")

    # 2. files exchanged between the CPU and the GPU, float32 on both.
    print()
    models = {"cpu": load_model(folder, cpu), "gpu": load_model(folder, gpu)}
    lam = models["cpu"].config.get("lambda") or 1.0
    files = {side: codec.encode(m, image, lam).data for side, m in models.items()}
    decoded_symbols = {}
    for made_on, data in files.items():
        header, payload = container.unpack(data)
        y = {side: codec.decode_latent_code(m, header, payload)[0] for side, m in models.items()}
        decoded_symbols[made_on] = y["cpu"]
        same = torch.equal(y["cpu"], y["gpu"])
        pixels = {side: codec.decode(m, data, steps=2) for side, m in models.items()}
        ok, how = compare_pixels(pixels["cpu"], pixels["gpu"])
        print(f"  encoded on the {made_on.upper()}: decoded symbols {'identical' if same else 'DIFFER'} on CPU and "
              f"GPU; 2-step pixels CPU vs GPU: {how} -> {'ok' if same and ok else 'FAIL'}")
        if not (same and ok):
            failures.append(f"file encoded on the {made_on}")
    y_cpu, y_gpu = decoded_symbols["cpu"], decoded_symbols["gpu"]
    flipped = int((y_cpu != y_gpu).sum())
    print(f"  CPU and GPU encoders: files {'identical' if files['cpu'] == files['gpu'] else 'differ'}, "
          f"{flipped} of {y_cpu.numel()} symbols differ (the encoders' float32 networks round differently; "
          "either file decodes the same everywhere)")
    if failures:
        print(f"gpu_check: FAILED: {', '.join(failures)}")
        return 1
    print("gpu_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
