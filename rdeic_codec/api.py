"""The public Python API: load a model once, then encode and decode many images.

    from rdeic_codec import Codec

    codec = Codec()                              # the shipped model, on the GPU if there is one
    data = codec.encode("photo.png", lam=0.5)    # .rdc bytes (a path, image-file bytes or an array)
    data = codec.encode(pixels, size=2000)       # the largest file not over 2000 bytes
    pixels = codec.decode(data, steps=5)         # (H, W, 3) uint8 RGB

The checks are the command line's: the same size guard (``max_pixels``), λ range, steps and file
validation, and the same one-line messages. Every error a caller's input can cause is a subclass of
``ValueError`` (:class:`~rdeic_codec.imageio.ImageError`, :class:`~rdeic_codec.container.FormatError`,
:class:`~rdeic_codec.codec.CodecError`, :class:`~rdeic_codec.model.ModelError`).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from . import codec as _codec
from .container import Header, unpack
from .imageio import ImageError, load_image
from .model import load_model
from .target import encode_at_rate


class Codec:
    """One loaded model and what it is run with.

    Args:
        model: a model directory (default: ``$RDEIC_MODEL``, else the shipped ``models/rdeic-small``).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        half: run the autoencoder and diffusion networks in float16 (for GPUs); files are unchanged.
        threads: CPU threads for torch (default: torch's choice). This is process-wide, as in torch.
        max_pixels: refuse images and files with more pixels than this (see ``--max-pixels``).
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str | torch.device = "auto",
                 half: bool = False, threads: int | None = None, max_pixels: int = _codec.DEFAULT_MAX_PIXELS):
        if threads:
            torch.set_num_threads(int(threads))
        if not (isinstance(max_pixels, int) and max_pixels >= 1):
            raise _codec.CodecError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        self.max_pixels = max_pixels
        self.model = load_model(os.fspath(model) if model is not None else None, _device(device), half=half)

    @property
    def model_id(self) -> str:
        """The 8 hex digits every file made with this model carries."""
        return self.model.model_id.hex()

    @property
    def lambda_range(self) -> tuple[float, float] | None:
        """The λ values this model codes, or None for a model of one fixed λ (``self.model.config["lambda"]``)."""
        return self.model.compression.lambda_range

    def encode(self, image, lam: float | None = None, *, size: int | None = None,
               bpp: float | None = None, refine: int = 0) -> bytes:
        """Compress an image to ``.rdc`` bytes.

        Args:
            image: a path, the bytes of an image file (read as ``rdeic encode`` reads files: EXIF
                orientation applied, alpha composited over white with a warning), or a uint8 array of
                shape (H, W, 3) RGB, (H, W) gray or (H, W, 4) RGBA.
            lam: rate parameter λ (default 0.25); or give instead
            size: the largest file not over this many bytes, or
            bpp: the largest file not over this many bits per pixel.
            refine: encoder refinement steps, as ``rdeic encode --refine`` (25 is a good start).
        """
        return self.encode_result(image, lam, size=size, bpp=bpp, refine=refine).data

    def encode_result(self, image, lam: float | None = None, *, size: int | None = None,
                      bpp: float | None = None, refine: int = 0) -> _codec.EncodeResult:
        """As :meth:`encode`, with the λ used, the size and ``bpp`` (an :class:`~rdeic_codec.codec.EncodeResult`)."""
        pixels = self._pixels(image)
        return encode_at_rate(self.model, pixels, lam, size, bpp, refine=refine)[0]

    def decode(self, data, steps: int = 5, detail: float = 1.0) -> np.ndarray:
        """Decompress ``.rdc`` bytes (or a path to a file) to an (H, W, 3) uint8 RGB array.

        Args:
            data: the file's bytes, or its path.
            steps: denoising steps, 0 (fast preview) to 10; 2 and 5 are the trained ones.
            detail: 0 smooth, 1 as trained, above 1 sharper.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise _codec.CodecError(f"--steps must be an integer, got {steps!r}")
        return _codec.decode(self.model, _bytes(data), steps=int(steps), detail=float(detail),
                             max_pixels=self.max_pixels)

    def info(self, data) -> Header:
        """The header of ``.rdc`` bytes (or a file): size, λ, model id; checks the CRC."""
        return unpack(_bytes(data))[0]

    def _pixels(self, image) -> np.ndarray:
        def guard(w, h):
            _codec.check_size(w, h, self.max_pixels, "input image")

        if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
            loaded = load_image(_bytes(image), check_size=guard)
            if loaded.had_alpha:
                warnings.warn("the alpha channel is not coded; composited over white", stacklevel=3)
            return loaded.pixels
        if not isinstance(image, np.ndarray):
            raise ImageError(f"encode takes a path, image-file bytes or a numpy array, not {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ImageError(f"encode takes uint8 pixels, got {image.dtype}")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ImageError(f"encode takes an (H, W, 3), (H, W) or (H, W, 4) array, got shape {image.shape}")
        guard(image.shape[1], image.shape[0])
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        elif image.shape[2] == 4:
            warnings.warn("the alpha channel is not coded; composited over white", stacklevel=3)
            alpha = image[:, :, 3:].astype(np.float64) / 255.0
            image = np.rint(image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        return np.ascontiguousarray(image)


def _bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, (str, os.PathLike)):
        from .imageio import read_input

        path = os.fspath(data)
        if path == "-":
            raise ImageError("'-' (standard input) is for the command line; pass the bytes instead")
        return read_input(path)
    raise ImageError(f"expected bytes or a path, not {type(data).__name__}")


def _device(device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise _codec.CodecError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise _codec.CodecError("--device cuda: no CUDA device is available")
    return torch.device(device)
