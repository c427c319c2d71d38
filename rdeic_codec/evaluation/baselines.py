"""Baseline image codecs (JPEG, WebP, AVIF, JPEG XL) and rate matching by bisection.

Each codec encodes a PIL RGB image at one *setting* of its quality knob to bytes and decodes them
back to an (H, W, 3) uint8 array. Settings are the native values of each tool, listed from the
smallest file to the largest. JPEG uses Pillow; the others use the Debian command-line tools
(``tools/install-baselines.sh`` installs them):

================  ==================  =========================================================
codec             tool (package)      knob, low -> high quality
================  ==================  =========================================================
``jpeg``          Pillow (libjpeg)    quality 1..100 (4:2:0, optimised Huffman tables)
``webp``          cwebp/dwebp (webp)  -q 0..100, -m 6
``avif``          avifenc/avifdec     quantizer 63..0 (--min = --max), 4:2:0, -s 4
                  (libavif-bin)
``avif-half``     same                as ``avif`` on the image downscaled 2x (Lanczos), decoded
                                      and upscaled back (Lanczos); 1 header byte keeps the
                                      original size's parity and is counted in the rate
``jxl``           cjxl/djxl           distance 25.0..0.1 in steps of 0.1 (-e 7)
                  (libjxl-tools)
================  ==================  =========================================================

:func:`find_close` is the rate matching of CompressAI's ``find_closest_bpp`` (J. Begaint et al.,
"CompressAI: a PyTorch library and evaluation platform for end-to-end compression research",
arXiv:2011.03029), tightened so that the returned file never exceeds the target.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


class BaselineUnavailable(RuntimeError):
    """A command-line encoder or decoder is not installed."""


@dataclass(frozen=True, eq=False)  # eq would compare arrays
class Encoded:
    """One encoding of one image.

    Attributes:
        codec: codec name.
        setting: the knob value used (see the module table).
        data: the compressed bytes (everything a decoder needs).
        bpp: 8 * len(data) / (original H * W).
        decoded: the reconstruction, uint8 (H, W, 3), same size as the original.
        encode_s: seconds the encode took (wall clock, tool start-up included).
        decode_s: seconds the decode took.
    """

    codec: str
    setting: float
    data: bytes = field(repr=False)
    bpp: float
    decoded: np.ndarray = field(repr=False)
    encode_s: float = 0.0
    decode_s: float = 0.0

    @property
    def num_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class CloseResult:
    """Outcome of :func:`find_close`.

    Attributes:
        codec: codec name.
        target_bpp: the requested rate.
        encoded: the largest file not exceeding ``target_bpp``; None when unreachable.
        min_bpp: the rate at the lowest setting (the smallest file the codec makes here).
        tries: number of encodings made.
    """

    codec: str
    target_bpp: float
    encoded: Encoded | None
    min_bpp: float
    tries: int

    @property
    def reachable(self) -> bool:
        """False when even the lowest setting exceeds the target."""
        return self.encoded is not None


def _rgb(image: Image.Image) -> Image.Image:
    """Pixels only, as 8-bit RGB: ICC profiles and other metadata would be copied into the files by
    some encoders and inflate the rate; values are taken as sRGB, as the metrics take them."""
    return Image.fromarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


class Codec:
    """Base class. Subclasses set ``name``, ``settings`` and the tool table, and implement
    :meth:`_encode` / :meth:`_decode` working in a temporary directory."""

    name: str = ""
    settings: tuple[float, ...] = ()  # from the smallest file to the largest
    tools: tuple[tuple[str, str], ...] = ()  # (executable, Debian package)
    version_cmd: tuple[str, ...] = ()  # prints the tool version on its first line

    def require(self) -> None:
        """Raise :class:`BaselineUnavailable` naming the Debian package of any missing tool."""
        for exe, package in self.tools:
            if shutil.which(exe) is None:
                raise BaselineUnavailable(
                    f"{self.name}: '{exe}' not found on PATH; install the Debian package "
                    f"'{package}' (apt-get install {package}, or tools/install-baselines.sh)"
                )

    def available(self) -> bool:
        """True when every tool this codec needs is installed."""
        try:
            self.require()
        except BaselineUnavailable:
            return False
        return True

    def version(self) -> str:
        """The encoder's version string, for reports."""
        self.require()
        proc = subprocess.run(list(self.version_cmd), capture_output=True, text=True)
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        return lines[0].removeprefix("Version:").strip() if lines else "unknown"

    def encode(self, image: Image.Image, setting: float) -> bytes:
        """Encode an image.

        Args:
            image: PIL image (converted to RGB if needed).
            setting: one of ``self.settings``.

        Returns:
            The compressed bytes.
        """
        self.require()
        with tempfile.TemporaryDirectory(prefix=f"rdeic-{self.name}-") as tmp:
            return self._encode(_rgb(image), setting, Path(tmp))

    def decode(self, data: bytes) -> np.ndarray:
        """Decode bytes made by :meth:`encode`.

        Args:
            data: compressed bytes.

        Returns:
            uint8 array (H, W, 3), RGB.
        """
        self.require()
        with tempfile.TemporaryDirectory(prefix=f"rdeic-{self.name}-") as tmp:
            return self._decode(data, Path(tmp))

    def roundtrip(self, image: Image.Image, setting: float) -> Encoded:
        """Encode, decode and measure the rate against the original pixel count.

        Args:
            image: PIL image (converted to RGB if needed).
            setting: one of ``self.settings``.

        Returns:
            An :class:`Encoded`, with the encode and decode each timed.
        """
        t0 = time.perf_counter()
        data = self.encode(image, setting)
        t1 = time.perf_counter()
        decoded = self.decode(data)
        t2 = time.perf_counter()
        w, h = image.size
        if decoded.shape != (h, w, 3):
            raise RuntimeError(f"{self.name}: decoded shape {decoded.shape} != {(h, w, 3)}")
        return Encoded(self.name, setting, data, 8.0 * len(data) / (w * h), decoded, t1 - t0, t2 - t1)

    def _encode(self, image: Image.Image, setting: float, tmp: Path) -> bytes:
        raise NotImplementedError

    def _decode(self, data: bytes, tmp: Path) -> np.ndarray:
        raise NotImplementedError


def _run(cmd: Sequence[str]) -> None:
    """Run a tool; on failure raise with its stderr (the tools print their errors there)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


class JpegCodec(Codec):
    """Baseline JPEG (ITU-T T.81) via Pillow: 4:2:0 chroma, optimised Huffman tables."""

    name = "jpeg"
    settings = tuple(float(q) for q in range(1, 101))

    def version(self) -> str:
        import PIL

        return f"Pillow {PIL.__version__}"

    def _encode(self, image: Image.Image, setting: float, tmp: Path) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(setting), subsampling="4:2:0", optimize=True)
        return buf.getvalue()

    def _decode(self, data: bytes, tmp: Path) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)


class WebpCodec(Codec):
    """WebP lossy (VP8 intra) via cwebp at its slowest, best method (-m 6)."""

    name = "webp"
    settings = tuple(float(q) for q in range(0, 101))
    tools = (("cwebp", "webp"), ("dwebp", "webp"))
    version_cmd = ("cwebp", "-version")

    def _encode(self, image: Image.Image, setting: float, tmp: Path) -> bytes:
        src, dst = tmp / "in.png", tmp / "out.webp"
        image.save(src)
        _run(["cwebp", "-quiet", "-m", "6", "-q", str(int(setting)), str(src), "-o", str(dst)])
        return dst.read_bytes()

    def _decode(self, data: bytes, tmp: Path) -> np.ndarray:
        src, dst = tmp / "in.webp", tmp / "out.png"
        src.write_bytes(data)
        _run(["dwebp", "-quiet", str(src), "-o", str(dst)])
        return _read_rgb(dst)


class AvifCodec(Codec):
    """AVIF (AV1 intra) via avifenc/libaom: fixed quantizer, 8-bit 4:2:0, speed 4 by default.

    Args:
        speed: avifenc -s (0 slowest/best .. 10 fastest).
    """

    name = "avif"
    settings = tuple(float(q) for q in range(63, -1, -1))  # quantizer: 63 = coarsest
    tools = (("avifenc", "libavif-bin"), ("avifdec", "libavif-bin"))
    version_cmd = ("avifenc", "--version")

    def __init__(self, speed: int = 4) -> None:
        self.speed = speed

    def _encode(self, image: Image.Image, setting: float, tmp: Path) -> bytes:
        src, dst = tmp / "in.png", tmp / "out.avif"
        image.save(src)
        q = str(int(setting))
        # 4:2:0 as AVIF is deployed at low rates; one thread, the machine is shared.
        _run(["avifenc", "-c", "aom", "-j", "1", "-s", str(self.speed), "-d", "8", "-y", "420",
              "--min", q, "--max", q, str(src), str(dst)])  # fmt: skip
        return dst.read_bytes()

    def _decode(self, data: bytes, tmp: Path) -> np.ndarray:
        src, dst = tmp / "in.avif", tmp / "out.png"
        src.write_bytes(data)
        _run(["avifdec", "-d", "8", str(src), str(dst)])
        return _read_rgb(dst)


class AvifHalfCodec(AvifCodec):
    """AVIF at half resolution: Lanczos downscale 2x, AVIF, decode, Lanczos upscale back.

    What a user would do at extreme rates. The original size is ceil(w/2), ceil(h/2) of the coded
    image minus a parity bit per side, stored in a 1-byte header that counts in the rate.
    """

    name = "avif-half"

    def _encode(self, image: Image.Image, setting: float, tmp: Path) -> bytes:
        w, h = image.size
        half = image.resize(((w + 1) // 2, (h + 1) // 2), Image.Resampling.LANCZOS)
        header = bytes([(w % 2) | ((h % 2) << 1)])
        return header + super()._encode(half, setting, tmp)

    def _decode(self, data: bytes, tmp: Path) -> np.ndarray:
        parity, payload = data[0], data[1:]
        small = super()._decode(payload, tmp)
        h2, w2 = small.shape[:2]
        size = (2 * w2 - (parity & 1), 2 * h2 - ((parity >> 1) & 1))
        up = Image.fromarray(small).resize(size, Image.Resampling.LANCZOS)
        return np.array(up, dtype=np.uint8)


class JxlCodec(Codec):
    """JPEG XL (ISO/IEC 18181) via cjxl/djxl, VarDCT, by Butteraugli distance (-d), effort 7.

    libjxl 0.7 accepts distances up to 25, so JPEG XL cannot reach the lowest rates.
    """

    name = "jxl"
    settings = tuple(round(d / 10.0, 1) for d in range(250, 0, -1))  # distance 25.0 .. 0.1
    tools = (("cjxl", "libjxl-tools"), ("djxl", "libjxl-tools"))
    version_cmd = ("cjxl", "--version")

    def _encode(self, image: Image.Image, setting: float, tmp: Path) -> bytes:
        src, dst = tmp / "in.png", tmp / "out.jxl"
        image.save(src)
        _run(["cjxl", str(src), str(dst), "-d", f"{setting:.1f}", "-e", "7", "--num_threads", "1"])
        return dst.read_bytes()

    def _decode(self, data: bytes, tmp: Path) -> np.ndarray:
        src, dst = tmp / "in.jxl", tmp / "out.png"
        src.write_bytes(data)
        _run(["djxl", str(src), str(dst), "--bits_per_sample", "8", "--num_threads", "1"])
        return _read_rgb(dst)


CODECS: dict[str, type[Codec]] = {
    c.name: c for c in (JpegCodec, WebpCodec, AvifCodec, AvifHalfCodec, JxlCodec)
}


def get_codec(name: str) -> Codec:
    """A codec instance by name ('jpeg', 'webp', 'avif', 'avif-half', 'jxl')."""
    try:
        return CODECS[name]()
    except KeyError:
        raise ValueError(f"unknown baseline codec {name!r}; known: {sorted(CODECS)}") from None


def bisect_settings(settings: Sequence[float], target_bpp: float,
                    bpp_of: Callable[[float], float]) -> tuple[float | None, float]:
    """The bisection of :func:`find_close`, over any way of getting a setting's rate.

    The settings it asks for depend only on the rates it is given, so a caller that answers
    ``bpp_of`` from a cache gets the same choice as one that encodes every time.

    Args:
        settings: a codec's settings, from the smallest file to the largest.
        target_bpp: the rate not to exceed.
        bpp_of: the rate of one setting (called at most once per setting).

    Returns:
        (the chosen setting, or None when even the lowest setting exceeds the target;
        the rate of the lowest setting).
    """
    known: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in known:
            known[i] = bpp_of(settings[i])
        return known[i]

    lowest = at(0)
    if lowest > target_bpp:
        return None, lowest
    lo, hi = 0, len(settings) - 1  # invariant: at(lo) fits; everything above hi is unknown/over
    if at(hi) <= target_bpp:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid) <= target_bpp:
            lo = mid
        else:
            hi = mid
    return settings[lo], lowest


def find_close(codec: Codec | str, image: Image.Image, target_bpp: float) -> CloseResult:
    """Find the setting whose file is the largest not exceeding ``target_bpp``.

    Bisects the index into ``codec.settings`` (:func:`bisect_settings`), assuming the file size
    grows with the setting (it does nearly everywhere; where it does not, the result is still a
    measured file within the target, possibly not the very largest one).

    Args:
        codec: a :class:`Codec` or its name.
        image: PIL image; bpp = 8 * bytes / (W * H) of this image.
        target_bpp: the rate not to exceed.

    Returns:
        A :class:`CloseResult`; ``reachable`` is False (and ``encoded`` None) when even the lowest
        setting gives more than ``target_bpp``.
    """
    if isinstance(codec, str):
        codec = get_codec(codec)
    codec.require()
    image = _rgb(image)
    tried: dict[float, Encoded] = {}

    def bpp_of(setting: float) -> float:
        tried[setting] = codec.roundtrip(image, setting)
        return tried[setting].bpp

    chosen, min_bpp = bisect_settings(codec.settings, target_bpp, bpp_of)
    encoded = None if chosen is None else tried[chosen]
    return CloseResult(codec.name, target_bpp, encoded, min_bpp, len(tried))
