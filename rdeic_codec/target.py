"""Rate targets: the largest file not over a size (``rdeic encode --size`` / ``--bpp``), as ``cwebp -size``.

The search runs over the model's continuous λ range, on the values a file can store (float16), and
measures the real coded size of every probe. The λ-independent half of encoding (VAE encoder and g_a)
runs once; each probe pays only for gain, h_a, VQ and range coding. File size grows with λ only
approximately, so the search brackets the target in log λ and keeps the largest file ≤ target among
all probes, not merely the last one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from . import codec
from .container import quantize_lambda

MAX_PROBES = 12  # bounds the cost; the shipped model needed 2 to 9 (4.4 on average) on 14 targets
# Refined files tried under a size target, each costing the refinement's N steps. Refinement moves a
# file's size by −3 to +20% at the same λ (models/rdeic-small/README.md), which one step along the plain
# files' size–λ slope mostly undoes; a third try covers a poor first guess.
MAX_REFINES = 3
WORD_BYTES = 4  # the range coder writes 32-bit words
DEFAULT_LAMBDA = 0.25  # what `rdeic encode` uses without --lambda, --size or --bpp


class TargetError(codec.CodecError):
    """A target this model cannot reach for this image (below its smallest file), or cannot search."""


@dataclass
class TargetResult:
    result: codec.EncodeResult  # the chosen file
    target_bytes: int
    probes: list[tuple[float, int]] = field(default_factory=list)  # (λ, bytes) in the order tried
    above_largest: bool = False  # the target exceeds the largest file: result is the largest
    refine_missed: bool = False  # every refined file was over the target: result is the plain search's file


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmM]?)[bB]?\s*$")


def parse_size(text: str) -> int:
    """Bytes from ``1500``, ``1.5k`` (= 1500), ``2M`` (= 2,000,000); an optional trailing ``B``.

    Raises:
        ValueError: with a one-line reason.
    """
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"expected a size in bytes such as 1500, 1.5k or 2M, got {text!r}")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if value < 1:
        raise ValueError(f"a size must be at least 1 byte, got {text!r}")
    return int(value)


def bpp_to_bytes(bpp: float, width: int, height: int) -> int:
    """The byte budget of ``bpp`` bits per pixel, counted as the stats line counts bpp (whole file)."""
    return int(math.floor(bpp * width * height / 8 + 1e-9))


def lambda_grid(lo: float, hi: float) -> np.ndarray:
    """Every λ a file can hold (float16) from ``lo`` to ``hi`` as the file stores them, ascending."""
    first, last = (int(np.float16(quantize_lambda(v)).view(np.uint16)) for v in (lo, hi))
    # Positive float16 values are ordered like their bit patterns.
    return np.arange(first, last + 1, dtype=np.uint16).view(np.float16).astype(float)


def check_searchable(model) -> tuple[float, float]:
    """The model's λ range; a model of one fixed λ raises :class:`TargetError` saying so."""
    rng = model.compression.lambda_range
    if rng is None:
        fixed = model.config.get("lambda")
        raise TargetError(f"this model has one fixed λ ({fixed:g}): its file size cannot be steered, "
                          "so --size/--bpp cannot search; use --lambda" if fixed is not None else
                          "this model has no λ range, so --size/--bpp cannot search")
    return rng


def encode_to_size(model, image: np.ndarray | codec.ImageAnalysis, target_bytes: int,
                   max_probes: int = MAX_PROBES) -> TargetResult:
    """The largest file not over ``target_bytes``, searched over the model's λ range.

    Args:
        model: a loaded model with a λ range (a converted paper model has one λ: nothing to search).
        image: an (H, W, 3) uint8 RGB image, or its :func:`codec.analyse_image`.
        target_bytes: the budget for the whole file (header and CRC included).
        max_probes: bound on the number of coded probes.

    Raises:
        TargetError: the model has one fixed λ, or even its smallest file is over the target.
    """
    rng = check_searchable(model)
    if target_bytes < 1:
        raise TargetError(f"target size must be at least 1 byte, got {target_bytes}")
    grid = lambda_grid(*rng)
    analysis = _analysis(model, image)  # once: the probes share it
    out = TargetResult(result=None, target_bytes=target_bytes)  # type: ignore[arg-type]

    def probe(i: int) -> codec.EncodeResult:
        # The ends are asked for as the range's own values: quantised, 0.1 falls just below 0.1.
        lam = rng[0] if i == 0 else rng[1] if i == len(grid) - 1 else float(grid[i])
        r = codec.encode_analysis(model, analysis, lam)
        out.probes.append((r.lam, len(r.data)))
        if len(r.data) <= target_bytes and (out.result is None or len(r.data) > len(out.result.data)):
            out.result = r
        return r

    last = len(grid) - 1
    ok = bad = None  # bracket: grid[ok] fits the target, grid[bad] does not
    sizes: dict[int, int] = {}
    i = int(np.searchsorted(grid, math.sqrt(grid[0] * grid[-1])))  # first probe: the middle in log λ
    while True:
        size = sizes[i] = len(probe(i).data)
        if size <= target_bytes:
            ok, bad = i, (bad if bad is not None and bad > i else None)
        else:
            bad, ok = i, (ok if ok is not None and ok < i else None)
        if ok == last:  # even the largest file fits
            out.above_largest = size < target_bytes
            return out
        if bad == 0:  # even the smallest file is over the target
            if out.result is None:
                raise TargetError(f"target {target_bytes} bytes is below the smallest file this model makes for "
                                  f"this image ({size} bytes at its smallest lambda, {rng[0]:g})")
            return out  # sizes are not quite monotone in λ: a larger λ made a file that fits
        # The payload is whole 32-bit words: once the best file is within 3 bytes of the target, no
        # larger one fits (bar a header one byte shorter), so the search stops there.
        if out.result is not None and target_bytes - len(out.result.data) < WORD_BYTES:
            return out
        if (ok is not None and bad is not None and bad - ok <= 1) or len(out.probes) >= max_probes:
            return out
        if ok is None or bad is None:  # not bracketed yet: extrapolate once, then try the end of the range
            i = _next_probe(grid, sizes, ok, bad, target_bytes) if len(sizes) < 2 else last if bad is None else 0
        else:
            i = _next_probe(grid, sizes, ok, bad, target_bytes)


def _next_probe(grid: np.ndarray, sizes: dict[int, int], ok: int | None, bad: int | None, target: int) -> int:
    """Where to probe next: size ≈ a·λ^b locally, so a secant in (log λ, log size) toward the target.

    Inside a bracket the guess is kept to its middle 80 %, so that a poor guess still shrinks it as
    bisection would; outside one (after the first probe) it extrapolates with b = 0.5, close to the
    shipped model's slope (0.43 from λ 0.1 to 2 on the 768×512 city photo).
    """
    log_t = math.log(target)
    if ok is not None and bad is not None:
        lo, hi = ok, bad
        span = math.log(sizes[hi]) - math.log(sizes[lo])
        frac = (log_t - math.log(sizes[lo])) / span if span > 0 else 0.5
        frac = min(max(frac, 0.1), 0.9)
        guess = math.exp(math.log(grid[lo]) + frac * (math.log(grid[hi]) - math.log(grid[lo])))
        return min(max(int(np.searchsorted(grid, guess)), lo + 1), hi - 1)
    known = ok if ok is not None else bad
    guess = math.exp(math.log(grid[known]) + (log_t - math.log(sizes[known])) / 0.5)
    j = int(np.searchsorted(grid, guess))
    return min(max(j, known + 1), len(grid) - 1) if ok is not None else max(min(j, known - 1), 0)


def refine_to_size(model, pixels: np.ndarray, analysis: codec.ImageAnalysis, found: TargetResult,
                   iterations: int, progress=None) -> TargetResult:
    """The plain search's result ``found`` replaced by a refined file not over its target, if one is found.

    Refining every probe of the search would cost N steps each, so refinement runs at the λ the plain
    search chose; a refined file over the target is tried again at a lower λ, at most
    :data:`MAX_REFINES` times. Size ≈ a·λ^b, with b the plain probes' local slope and then the refined
    files' own. When none fits, the plain file stays (``refine_missed``): the result is never over the
    target.

    Args:
        pixels: the (H, W, 3) uint8 photo ``analysis`` was made from.
        analysis: its :func:`codec.analyse_image`, unrefined and not consumed.
        found: :func:`encode_to_size`'s result for it.
        iterations: refinement steps (see :func:`codec.refine_analysis`).
        progress: called with (steps done, steps in all) during each refinement.
    """
    lo = model.compression.lambda_range[0]
    lam = found.result.lam
    slope = _local_slope(found.probes, lam)
    tried = []
    for _ in range(MAX_REFINES):
        refined = codec.refine_analysis(model, pixels, analysis, lam, iterations, progress=progress)
        r = codec.encode_analysis(model, refined, lam, consume=True)
        found.probes.append((r.lam, len(r.data)))
        if len(r.data) <= found.target_bytes:
            # Still the largest file only if refined at the plain search's largest λ.
            found.above_largest = found.above_largest and r.lam == found.result.lam
            found.result = r
            return found
        tried.append((r.lam, len(r.data)))
        if lam <= lo:
            break
        if len(tried) > 1:
            slope = _local_slope(tried, lam)
        # Aimed 1% under the target, since sizes are not quite monotone in λ.
        guess = lam * (0.99 * found.target_bytes / len(r.data)) ** (1 / slope)
        lam = max(lo, float(quantize_lambda(guess)))
    found.refine_missed = True
    return found


def _local_slope(probes: list[tuple[float, int]], lam: float) -> float:
    """b in size ≈ a·λ^b near ``lam``, from the two probes nearest it in log λ (0.5 without two), kept
    within 0.2 … 1 so that one odd pair cannot send the next guess far off."""
    points = sorted({(p, n) for p, n in probes if n > 0}, key=lambda pn: abs(math.log(pn[0] / lam)))
    for other in points[1:]:
        if other[0] != points[0][0] and other[1] != points[0][1]:
            b = math.log(other[1] / points[0][1]) / math.log(other[0] / points[0][0])
            return min(max(b, 0.2), 1.0)
    return 0.5


def encode_at_rate(model, image: np.ndarray | codec.ImageAnalysis, lam: float | None = None,
                   size: int | None = None, bpp: float | None = None, refine: int = 0,
                   pixels: np.ndarray | None = None, progress=None) -> tuple[codec.EncodeResult, TargetResult | None]:
    """Encode at a λ, or at the largest size not over ``size`` bytes or ``bpp`` bits per pixel.

    At most one of the three may be given (none: λ = :data:`DEFAULT_LAMBDA`). Returns the encoding and,
    for a target, the search (its probes, and whether the target was above the largest file).

    Args:
        image: an (H, W, 3) uint8 RGB image, or its :func:`codec.analyse_image`, which this then
            consumes: a caller that frees the pixels after the analysis holds 3 bytes a pixel less
            while the entropy coder runs (check the rate first with :func:`check_rate`).
        refine: encoder refinement steps (:func:`codec.refine_analysis`); with a target, see
            :func:`refine_to_size`.
        pixels: the photo, where ``image`` is its analysis and ``refine`` is set (refinement measures
            the distortion against it).
        progress: called with (steps done, steps in all) while refining.

    Raises:
        codec.CodecError: more than one rate given, a bad value, or a target the model cannot reach.
    """
    budget = check_rate(model, _dimensions(image), lam, size, bpp)
    if refine:
        from .refine import check_refinable

        check_refinable(model)
    if refine and pixels is None:
        if isinstance(image, codec.ImageAnalysis):
            raise ValueError("refinement needs the pixels the analysis was made from")
        pixels = image
    analysis = _analysis(model, image)
    if budget is None:
        lam = DEFAULT_LAMBDA if lam is None else lam
        if refine:
            analysis = codec.refine_analysis(model, pixels, analysis, lam, refine, progress=progress)
        return codec.encode_analysis(model, analysis, lam, consume=True), None
    found = encode_to_size(model, analysis, budget)
    if refine:
        found = refine_to_size(model, pixels, analysis, found, refine, progress)
    return found.result, found


def check_rate(model, dimensions: tuple[int, int], lam: float | None = None, size: int | None = None,
               bpp: float | None = None) -> int | None:
    """Check the rate arguments of :func:`encode_at_rate` for a (width, height) image before any
    network runs; returns the byte budget of a target (None for a λ).

    Raises:
        codec.CodecError: as :func:`encode_at_rate`.
    """
    given = [name for name, v in (("--lambda", lam), ("--size", size), ("--bpp", bpp)) if v is not None]
    if len(given) > 1:
        raise codec.CodecError(f"give one of {' and '.join(given)}, not both")
    if size is None and bpp is None:
        codec.check_lambda(model, DEFAULT_LAMBDA if lam is None else lam)
        return None
    if bpp is not None and not (bpp > 0 and math.isfinite(bpp)):
        raise codec.CodecError(f"--bpp must be a positive number, got {bpp}")
    check_searchable(model)
    width, height = dimensions
    budget = size if size is not None else bpp_to_bytes(bpp, width, height)
    if budget < 1:
        raise TargetError(f"--bpp {bpp:g} is {budget} bytes for a {width}×{height} image; no file is that small")
    return budget


def _dimensions(image) -> tuple[int, int]:
    if isinstance(image, codec.ImageAnalysis):
        return image.width, image.height
    codec.check_image(image)
    return image.shape[1], image.shape[0]


def _analysis(model, image) -> codec.ImageAnalysis:
    if isinstance(image, codec.ImageAnalysis):
        if image.y is None:
            raise ValueError("this ImageAnalysis was consumed by an earlier encode")
        return image
    return codec.analyse_image(model, image)
