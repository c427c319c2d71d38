#!/usr/bin/env python3
"""Throw bad, corrupt and hostile inputs at the codec and count what happens (docs/robustness.md).

Uses a tiny random-weight model made in a temporary folder and images made here; about a minute on
one core. Prints a Markdown table: each class of input, how many cases, and the outcomes, where an
outcome is the kind of error (with the start of its one-line message) or a decoded image. Any other
exception, or a multi-line message, is counted under "BUG" (and makes the exit status 1).

    python tools/robustness_report.py [--seed 0] [--crafted 200] [--mutations 3000]
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rdeic_codec import codec, container  # noqa: E402
from rdeic_codec.imageio import ImageError, load_image  # noqa: E402
from rdeic_codec.model import ModelError  # noqa: E402

USER_ERRORS = (container.FormatError, codec.CodecError, ImageError, ModelError)


def craft(model_id, lam, width, height, payload, version=1, declared_length=None):
    n = len(payload) if declared_length is None else declared_length
    body = b"".join([container.MAGIC, bytes([version]), model_id, struct.pack("<e", lam), container._varint(width),
                     container._varint(height), container._varint(n), payload])
    return body + struct.pack("<I", zlib.crc32(body))


def outcome(fn) -> str:
    try:
        result = fn()
    except USER_ERRORS as e:
        text = str(e)
        if "\n" in text or not text:
            return f"BUG: multi-line or empty {type(e).__name__}"
        return f"{type(e).__name__}: {_pattern(text)}"
    except Exception as e:  # noqa: BLE001 - this is what the report looks for
        return f"BUG: {type(e).__name__}: {e}"
    if isinstance(result, np.ndarray):
        return "decoded to an image of the declared size"
    return "accepted"


DETAILS = ("cannot read input image: ", "does not fit the config: ", "is not a valid rdeic config: ")


def _pattern(message: str) -> str:
    """A message with what varies from case to case (ids, numbers, paths, details) replaced."""
    text = message.split(" (")[0]
    for marker in DETAILS:
        if marker in text:
            text = text[: text.index(marker) + len(marker)] + "..."
    text = re.sub(r"/\S*/", "", text)
    text = re.sub(r"rdeic-damaged-\w+", "DIR", text)
    text = re.sub(r"(?<![\w.])[-+]?(\d[\d.e+-]*|nan|inf)(?![\w])", "N", text)
    return re.sub(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{8}\b", "ID", text)


class Report:
    def __init__(self):
        self.rows = []

    def add(self, name, cases):
        t0 = time.perf_counter()
        tally = collections.Counter(outcome(fn) for fn in cases)
        seconds = time.perf_counter() - t0
        self.rows.append((name, sum(tally.values()), tally, seconds))
        print(f"  {name}: {sum(tally.values())} cases, {seconds:.1f} s", file=sys.stderr)

    def markdown(self) -> str:
        lines = ["| input class | cases | what happened (count × outcome) |", "|---|---:|---|"]
        for name, n, tally, _ in self.rows:
            what = "<br>".join(f"{c} × {k}" for k, c in tally.most_common())
            lines.append(f"| {name} | {n} | {what} |")
        return "\n".join(lines)

    @property
    def bugs(self) -> int:
        return sum(c for _, _, tally, _ in self.rows for k, c in tally.items() if k.startswith("BUG"))


def mutate(data: bytes, rng) -> bytes:
    b = bytearray(data)
    for _ in range(rng.integers(1, 5)):
        kind = rng.integers(5)
        if kind == 0 and b:
            i = rng.integers(8 * len(b))
            b[i // 8] ^= 1 << (i % 8)
        elif kind == 1 and b:
            b[rng.integers(len(b))] = rng.integers(256)
        elif kind == 2:
            i = rng.integers(len(b) + 1)
            b[i:i] = rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8).tobytes()
        elif kind == 3 and b:
            i = rng.integers(len(b))
            del b[i : i + rng.integers(1, 9)]
        else:
            del b[rng.integers(len(b) + 1) :]
    return bytes(b)


def image_bytes(image, fmt, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def main() -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crafted", type=int, default=200, help="valid-CRC files with garbage payloads")
    parser.add_argument("--mutations", type=int, default=3000, help="random edits of a real file")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from rdeic_codec.model import RDEICModel, load_model, save_model
    from rdeic_codec.profiles import get_profile

    rng = np.random.default_rng(args.seed)
    folder = tempfile.mkdtemp(prefix="rdeic-robustness-")
    torch.manual_seed(args.seed)
    save_model(RDEICModel(get_profile("tiny")), folder, name="tiny-test")
    model = load_model(folder)
    mid = model.model_id
    yy, xx = np.mgrid[0:40, 0:56] / 56
    photo = np.clip(127 + 90 * np.stack([np.sin(6 * xx), np.cos(5 * yy), np.sin(4 * (xx + yy))], 2), 0, 255)
    sample = codec.encode(model, photo.astype(np.uint8), 0.5).data
    header, payload = container.unpack(sample)
    limit = 128 * 128

    def dec(data, steps=0, max_pixels=limit):
        return lambda: codec.decode(model, data, steps=steps, max_pixels=max_pixels)

    report = Report()
    print(f"real file: {len(sample)} bytes ({header.width}x{header.height}, payload {len(payload)} bytes)",
          file=sys.stderr)
    report.add(f"real file truncated at every byte (0..{len(sample) - 1})",
               [dec(sample[:n]) for n in range(len(sample))])
    report.add("real file, every single bit flipped",
               [dec(sample[: i // 8] + bytes([sample[i // 8] ^ (1 << i % 8)]) + sample[i // 8 + 1 :])
                for i in range(8 * len(sample))])
    mutated = [m for m in (mutate(sample, rng) for _ in range(args.mutations)) if m != sample]
    report.add("real file, 1-4 random edits (flip, overwrite, insert, delete, truncate)", [dec(m) for m in mutated])
    others = [b"", b"R", b"RDC", image_bytes(Image.fromarray(photo.astype(np.uint8)), "PNG"),
              image_bytes(Image.fromarray(photo.astype(np.uint8)), "JPEG"), b"plain text\n", bytes(100)]
    others += [rng.integers(0, 256, rng.integers(1, 200), dtype=np.uint8).tobytes() for _ in range(100)]
    report.add("empty, non-.rdc files (PNG, JPEG, text, zeros, 100 random)", [dec(d) for d in others])
    report.add("format versions 0 and 2..255 (valid CRC)",
               [dec(craft(mid, 0.5, 8, 8, payload, version=v)) for v in [0] + list(range(2, 256))])
    report.add("another model's id (100 random ids, valid CRC)",
               [dec(craft(rng.integers(0, 256, 4, dtype=np.uint8).tobytes(), 0.5, header.width, header.height,
                          payload)) for _ in range(100)])
    report.add("payload length past the end (declared 5 .. 2^34-1)",
               [dec(craft(mid, 0.5, 8, 8, b"\0" * 4, declared_length=n)) for n in (5, 8, 1000, 2**20, 2**34 - 1)])
    sizes = [(0, 0), (0, 5), (5, 0), (container.MAX_SIDE + 1, 1), (1, 2**34)]
    report.add("declared sizes 0×0, 0×N, N×0, over 2^20", [dec(craft(mid, 0.5, w, h, b"\0" * 8)) for w, h in sizes])
    big = [(100000, 100000), (container.MAX_SIDE, container.MAX_SIDE), (4097, 4096), (1, container.MAX_SIDE),
           (16, container.MAX_SIDE)]
    report.add("declared sizes over --max-pixels (100000×100000, thin 1×2^20, ...; default limit)",
               [dec(craft(mid, 0.5, w, h, b"\0" * 8), max_pixels=codec.DEFAULT_MAX_PIXELS) for w, h in big])
    lams = [float("nan"), float("inf"), float("-inf"), 0.0, -0.5, 1e-7]
    report.add("invalid λ (NaN, ±inf, 0, negative, float16 subnormal)",
               [dec(craft(mid, lam, 8, 8, b"\0" * 8)) for lam in lams])
    crafted = []
    for k in range(args.crafted):
        w, h = (int(v) for v in rng.integers(1, 129, 2))
        if k % 3 == 0:
            body = mutate(payload, rng)
        else:
            body = rng.integers(0, 256, 4 * rng.integers(0, 17), dtype=np.uint8).tobytes()
        crafted.append(dec(craft(mid, 0.5, w, h, body), steps=k % 2))
    t0 = time.perf_counter()
    report.add(f"valid CRC, garbage payload ({args.crafted} files, sizes up to 128×128, 0-1 steps)", crafted)
    per_file = (time.perf_counter() - t0) / max(args.crafted, 1)
    print(f"  garbage payloads: {per_file:.3f} s per file on average", file=sys.stderr)

    # Input images: mutated files of every format.
    base = Image.fromarray(photo.astype(np.uint8)[:24, :31])
    exif = Image.Exif()
    exif[0x0112] = 6
    sources = {"PNG": image_bytes(base, "PNG"), "JPEG (with EXIF)": image_bytes(base, "JPEG", exif=exif),
               "WebP": image_bytes(base, "WEBP"), "TIFF": image_bytes(base, "TIFF"),
               "TIFF LZW": image_bytes(base, "TIFF", compression="tiff_lzw"), "BMP": image_bytes(base, "BMP"),
               "GIF": image_bytes(base, "GIF")}
    cases = []
    for data in sources.values():
        cases += [(lambda m: lambda: load_image(m))(mutate(data, rng)) for _ in range(300)]
    report.add(f"input images ({', '.join(sources)}), 300 random edits each", cases)

    from rdeic_codec.imageio import load_image as load

    def guarded(data, limit=codec.DEFAULT_MAX_PIXELS):
        return lambda: load(data, check_size=lambda w, h: codec.check_size(w, h, limit, "input image"))

    sizes = [(20000, 1000), (1, 300000), (100000, 100000), (5000, 5000), (4096, 4097)]
    report.add("input images declaring large sizes (PNG header only; default --max-pixels)",
               [guarded(png_with_size(w, h)) for w, h in sizes])

    report.add("model directories (damaged as in tests/test_robustness.py)",
               [(lambda d: lambda: damaged_model(folder, d))(d) for d in MODEL_DAMAGE])
    return report


def png_with_size(width, height) -> bytes:
    from PIL import Image

    good = image_bytes(Image.new("RGB", (4, 4)), "PNG")
    ihdr = b"IHDR" + struct.pack(">II", width, height) + good[24:29]
    return good[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + good[33:]


def damaged_model(folder, damage):
    """Load a copy of the model after ``damage``."""
    from rdeic_codec.model import load_model

    copy = tempfile.mkdtemp(prefix="rdeic-damaged-")
    try:
        shutil.copytree(folder, copy, dirs_exist_ok=True)
        damage(copy)
        return load_model(copy)
    finally:
        shutil.rmtree(copy)


def _rehash(folder):
    import json

    from rdeic_codec.model import compute_model_id

    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["model_id"] = compute_model_id(folder, config)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def _config(edit, rehash=True):
    def apply(folder):
        import json

        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        edit(config)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        if rehash:
            _rehash(folder)
    return apply


def _weights(component, edit):
    def apply(folder):
        from safetensors.torch import load_file, save_file

        path = os.path.join(folder, f"{component}.safetensors")
        state = load_file(path)
        edit(state)
        save_file(state, path)
        _rehash(folder)
    return apply


def _write(name, data):
    def apply(folder):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return apply


def _flip_weight_byte(folder):
    path = os.path.join(folder, "vae.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 1
    open(path, "wb").write(bytes(data))


def _plant_pickle(folder):
    import pickle

    with open(os.path.join(folder, "unet.safetensors"), "wb") as f:
        pickle.dump({"weight": [1, 2, 3]}, f)
    _rehash(folder)


def _integer(state):
    state.update({k: v.to(__import__("torch").int32) for k, v in state.items()})


MODEL_DAMAGE = [
    _flip_weight_byte,
    _config(lambda c: c.update(model_id="00000000"), rehash=False),
    _config(lambda c: c.pop("entropy"), rehash=False),
    _config(lambda c: c["compression"].pop("N")),
    _config(lambda c: c["entropy"].pop("max_symbol")),
    _config(lambda c: c["diffusion"].pop("relay_start")),
    _config(lambda c: c["entropy"].update(num_scales=1)),
    _config(lambda c: c["compression"].update(N=-3)),
    _config(lambda c: c["compression"].update(codebook_size=64)),
    _weights("vae", lambda s: s.pop(sorted(s)[0])),
    _weights("control", lambda s: s.update(extra=__import__("torch").zeros(2))),
    _weights("vae", _integer),
    _weights("unet", lambda s: s.update(context=s["context"].to(__import__("torch").int32))),
    _plant_pickle,
    lambda d: os.remove(os.path.join(d, "unet.safetensors")),
    _write("config.json", b"{nope"),
    _write("config.json", b"\xff\xfe{}"),
    _write("config.json", b"[]"),
    lambda d: os.remove(os.path.join(d, "config.json")),
]


if __name__ == "__main__":
    t0 = time.perf_counter()
    rep = main()
    print(rep.markdown())
    print(f"\n{rep.bugs} cases ended in something other than a clean one-line error or an image "
          f"({time.perf_counter() - t0:.0f} s in all).")
    sys.exit(1 if rep.bugs else 0)
