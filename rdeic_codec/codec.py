"""Encode an image to ``.rdc`` bytes and decode it back: the RDEIC pipeline end to end.

Encoder: VAE encoder feature → g_a (× gain(λ)) → h_a → hyper-latent symbols (VQ indices, or rounded
z) → [float64 CPU] h_s and context networks → range-coded hyper latent and y. Decoder: the same float64
parameter path → ŷ → g_s → z_c → relay residual diffusion (seeded from the file) → VAE decoder.

Every stage runs in tiles (:mod:`rdeic_codec.tiled`), so memory stays bounded for large photos; an
image that fits one tile is processed in one piece.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from . import container, tiled
from .entropy.latent_coder import GaussianModels, LatentDecoder, LatentEncoder
from .entropy.tables import ScaleTable
from .model import network_dtype
from .networks.control import controlled_prediction
from .sampler import MAX_STEPS, relay_sample

PAD = 64  # total downsampling of the model: H/8 (VAE) × 1/2 (g_a) × 1/4 (h_a)
DEFAULT_MAX_PIXELS = 10000 * 10000  # tiled coding keeps memory bounded (docs: make bench)


class CodecError(ValueError):
    """A request the codec cannot serve (wrong model, size over the limit, bad parameter)."""


@dataclass
class EncodeResult:
    data: bytes
    lam: float
    width: int
    height: int
    estimated_bits: float

    @property
    def bpp(self) -> float:
        return 8 * len(self.data) / (self.width * self.height)


def pad_image(image: np.ndarray, multiple: int = PAD) -> np.ndarray:
    """Mirror-pad an (H, W, 3) image on the bottom and right to multiples of ``multiple``."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="symmetric") if ph or pw else image


def _to_tensor(image: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float()  # PIL arrays are read-only
    return (x / 127.5 - 1.0).to(device)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    # Round, don't truncate (the authors truncate).
    img = ((x[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return img.permute(1, 2, 0).cpu().numpy()


def _coders(model):
    table = ScaleTable(model.config["entropy"])
    return table, GaussianModels(table)


def check_lambda(model, lam: float) -> float:
    """Validate λ against the model and return the value the file stores."""
    rng = model.compression.lambda_range
    if not (lam > 0 and np.isfinite(lam)):
        raise CodecError(f"--lambda must be a positive number, got {lam}")
    if rng is None:
        fixed = model.config.get("lambda")
        if fixed is not None and abs(lam - fixed) > 1e-6 and lam != container.quantize_lambda(fixed):
            raise CodecError(f"this model was trained for λ = {fixed} only")
    elif not rng[0] - 1e-6 <= lam <= rng[1] + 1e-6:
        raise CodecError(f"--lambda {lam} is outside this model's range [{rng[0]:g}, {rng[1]:g}]")
    return container.quantize_lambda(lam)


def check_image(image: np.ndarray) -> None:
    """Refuse anything but an (H, W, 3) uint8 RGB array (what :func:`encode` codes)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CodecError("encode expects an (H, W, 3) uint8 RGB image")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise CodecError("input image is empty")


def encode(model, image: np.ndarray, lam: float, refine: int = 0) -> EncodeResult:
    """Compress an (H, W, 3) uint8 RGB image.

    Args:
        model: a loaded :class:`~rdeic_codec.model.RDEICModel` (on any device).
        image: the image.
        lam: rate parameter λ (distortion weight; higher means more bits).
        refine: encoder refinement steps (:func:`refine_analysis`; 0: none, g_a's y as it is).
    """
    check_image(image)
    check_lambda(model, lam)  # before the networks run
    analysis = refine_analysis(model, image, analyse_image(model, image), lam, refine)
    return encode_analysis(model, analysis, lam, consume=True)


# -- encoding in two halves, so a rate search (rdeic_codec/target.py) runs the first one once -------
@dataclass
class ImageAnalysis:
    """What encoding computes before λ enters: g_a of the VAE encoder feature (un-gained). A refined
    analysis (:func:`refine_analysis`) holds the hyper latent too, and codes at its own λ only."""

    y: torch.Tensor
    width: int
    height: int
    hyper: torch.Tensor | None = None  # refined: the hyper latent before rounding, at λ = hyper_lam
    hyper_lam: float | None = None


@torch.no_grad()
def analyse_image(model, image: np.ndarray) -> ImageAnalysis:
    """The λ-independent half of :func:`encode`: VAE encoder and g_a (most of an encode's time).

    Args:
        model: a loaded model.
        image: an (H, W, 3) uint8 RGB image.
    """
    check_image(image)
    height, width = image.shape[:2]
    device = next(model.parameters()).device
    padded = (-(-height // PAD) * PAD, -(-width // PAD) * PAD)
    y = tiled.analysis_transform(model, image, padded, lambda tile: _to_tensor(tile, device))
    return ImageAnalysis(y, width, height)


def refine_analysis(model, image: np.ndarray, analysis: ImageAnalysis, lam: float, iterations: int,
                    progress=None) -> ImageAnalysis:
    """Encoder-side refinement of ``analysis`` for coding at ``lam`` (:mod:`rdeic_codec.refine`): the same
    file format and decoder, a y that codes this photo better; the file is then written by
    :func:`encode_analysis` at the same λ.

    Args:
        model: the model that made ``analysis``.
        image: the photo it was made from, (H, W, 3) uint8.
        analysis: from :func:`analyse_image`; not changed.
        lam: rate parameter λ; refinement uses the value the file stores (float16), as coding does.
        iterations: gradient steps (0: ``analysis`` itself is returned).
        progress: called with (steps done, steps in all).
    """
    from .refine import refine

    lam = check_lambda(model, lam)
    if iterations <= 0:
        return analysis
    y, hyper = refine(model, image, analysis.y, lam, iterations, progress=progress)
    return ImageAnalysis(y, analysis.width, analysis.height, hyper, lam)


@torch.no_grad()
def encode_analysis(model, analysis: ImageAnalysis, lam: float, consume: bool = False) -> EncodeResult:
    """The λ-dependent half of :func:`encode`: gain, h_a, VQ and range coding.

    Args:
        model: the model that made ``analysis``.
        analysis: from :func:`analyse_image`.
        lam: rate parameter λ; the file stores (and the coder uses) its float16 value.
        consume: ``analysis`` is not used again: its y is gained in place (one full-size copy of y
            less; a rate search, which reuses it, leaves this off).
    """
    lam = check_lambda(model, lam)
    if analysis.hyper is not None and lam != analysis.hyper_lam:
        raise CodecError(f"this analysis was refined for λ = {analysis.hyper_lam:g}, not {lam:g}")
    device = analysis.y.device
    y, indices = tiled.gain_and_indices(model, analysis.y, torch.tensor([lam], device=device), in_place=consume)
    if analysis.hyper is not None:
        indices = model.compression.quantize.indices(analysis.hyper)  # refined with y: coded in place of h_a(y)'s
    if consume:
        analysis.y = None
    path = model.entropy_path()
    table, gaussians = _coders(model)
    coder = LatentEncoder(table, gaussians)
    idx = indices.cpu()
    coder.encode_hyper(idx.numpy(), path["quantize"])
    with tiled.hyper_parameters(model, idx) as hyper:
        # y is this call's own (consumed, or the gained copy) unless it is the analysis's un-gained y itself.
        coder.encode_latent(tiled.entropy_context(model), hyper, y.cpu(), overwrite=y is not analysis.y)
    header = container.Header(model_id=model.model_id, lam=lam, width=analysis.width, height=analysis.height)
    data = container.pack(header, coder.finish())
    return EncodeResult(data, lam, analysis.width, analysis.height, coder.estimated_bits)


def read_header(model, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[container.Header, bytes]:
    """Parse and check a file against a model before anything is allocated for it."""
    header, payload = container.unpack(data)
    if header.model_id != model.model_id:
        raise CodecError(f"file was made with model {header.model_id_hex}, not with this model "
                         f"({model.model_id.hex()}); pass --model with the model it was made with")
    check_size(header.width, header.height, max_pixels, "declared size")
    return header, payload


def check_size(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "size") -> None:
    """Refuse a size whose pixels, counted as the codec pads them, exceed ``max_pixels``.

    The codec works at the size rounded up to multiples of 64, up to 64× the area of a thin image
    (1×N): the guard bounds what is allocated, not only what is declared.
    """
    if width * height > max_pixels:
        raise CodecError(f"{what} {width}×{height} exceeds --max-pixels {max_pixels}")
    pw, ph = -(-width // PAD) * PAD, -(-height // PAD) * PAD
    if pw * ph > max_pixels:
        raise CodecError(f"{what} {width}×{height} is coded at {pw}×{ph}, which exceeds --max-pixels {max_pixels}")


@torch.no_grad()
def decode_latent_code(model, header: container.Header, payload: bytes):
    """Entropy-decode a payload: returns (ŷ on the CPU, float32 where that is exact, else float64;
    seed for the sampler)."""
    ph, pw = -(-header.height // PAD) * PAD, -(-header.width // PAD) * PAD
    path = model.entropy_path()
    table, gaussians = _coders(model)
    try:
        coder = LatentDecoder(payload, table, gaussians)
        idx = torch.from_numpy(coder.decode_hyper(ph // PAD, pw // PAD, path["quantize"]))
        with tiled.hyper_parameters(model, idx) as hyper:
            y_hat = coder.decode_latent(tiled.entropy_context(model), hyper)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise container.FormatError(f"the coded stream is invalid ({e})") from None
    return y_hat, zlib.crc32(payload)


@torch.no_grad()
def decode(model, data: bytes, steps: int = 5, detail: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS,
           progress=None) -> np.ndarray:
    """Decompress ``.rdc`` bytes to an (H, W, 3) uint8 RGB image.

    Args:
        model: the model the file was made with.
        data: the file's bytes.
        steps: denoising steps (0: the VAE decodes z_c alone, a fast preview; 1..10).
        detail: guidance s: 1 as trained, >1 sharpens; 0 is the bare UNet, or z_c itself for an
            anchored control module (:func:`.networks.control.controlled_prediction`).
        max_pixels: refuse larger declared sizes before allocating anything.
        progress: optional callable(k, steps).
    """
    if not 0 <= steps <= MAX_STEPS:
        raise CodecError(f"--steps must be between 0 and {MAX_STEPS}, got {steps}")
    if not np.isfinite(detail):
        raise CodecError("--detail must be a finite number")
    header, payload = read_header(model, data, max_pixels)
    y_hat, seed = decode_latent_code(model, header, payload)
    device = next(model.parameters()).device
    lam_t = torch.tensor([header.lam], device=device)
    guide, z_c = tiled.synthesise(model, y_hat.float().to(device), lam_t)
    del y_hat
    latent = z_c
    if steps > 0:
        context = model.unet.context.to(device)
        # The sampler's arithmetic stays float32; the networks run in their own dtype (float16 with use_half).
        dtype = network_dtype(model.unet)
        guide = guide.to(dtype)

        def model_fn(x, t, guide, z_c):
            return controlled_prediction(model.unet, model.control, x.to(dtype), t, context, guide, z_c, detail,
                                         model.config["diffusion"])

        generator = torch.Generator().manual_seed(seed)
        latent = relay_sample(model.config["diffusion"], z_c, tiled.tiled_prediction(model, model_fn, guide, z_c),
                              steps, generator, progress, model.control.prediction_type)
    del guide
    # SD's VAE decoder (paper profile) at full resolution needs far more memory than the rest: its tiles
    # are 512 px, as diffusers' own tiling.
    return tiled.decode_image(model, latent, header.height, header.width, _to_uint8)
