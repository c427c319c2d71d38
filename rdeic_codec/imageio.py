"""Reading input images and writing outputs without ever leaving a partial file.

Input policy (what a user of an image codec expects, stated rather than silent):
* any format Pillow reads (PNG, JPEG, WebP, TIFF, BMP, ...), 8- or 16-bit, grayscale, palette, CMYK;
* EXIF orientation is applied, so the image is coded as it is displayed;
* alpha (an alpha channel, or a PNG/GIF transparent colour) is not coded: transparent pixels are
  composited over white, and a warning says so;
* grayscale images are coded as RGB and decode to RGB.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np

OUTPUT_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".webp": "WEBP"}


class ImageError(ValueError):
    """An input that is not a readable image, or an output that cannot be written."""


@dataclass
class LoadedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    had_alpha: bool
    source_mode: str


def _to_rgb8(im) -> tuple[np.ndarray, bool]:
    from PIL import Image

    mode = im.mode
    # "transparency" in L/RGB/P images: a tRNS colour key or palette alpha, which convert("RGBA") applies.
    had_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or \
        (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit data spans 0..65535; 32-bit integer and float data are taken as 0..65535 too.
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2), False
    if had_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")), True
    if mode == "RGB;16" or mode.startswith("RGB") and mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im.convert("RGB")), False


def load_image(source: str | bytes, check_size=None) -> LoadedImage:
    """Read an image file (path) or image bytes into 8-bit RGB, EXIF orientation applied.

    Args:
        source: a path, or the file's bytes.
        check_size: optional ``check_size(width, height)`` that raises to refuse the image; it runs
            once the header is read, before the pixels are decoded and memory is allocated for them.
    """
    from PIL import Image, ImageOps

    errors = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
    try:
        with warnings.catch_warnings():
            if check_size is not None:  # the caller's guard is far below Pillow's bomb warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except errors as e:
        raise _image_error(e) from None
    with im:
        if check_size is not None:
            check_size(*im.size)  # the caller's error goes out as it is
        try:
            im.load()
            mode = im.mode
            im = ImageOps.exif_transpose(im)
            pixels, had_alpha = _to_rgb8(im)
        except errors as e:
            raise _image_error(e) from None
    if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError("input image is empty")
    return LoadedImage(np.ascontiguousarray(pixels), had_alpha, mode)


def _image_error(e: Exception) -> ImageError:
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return ImageError("input is not an image Pillow can read")
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(f"input image is too large ({e})")
    return ImageError(f"cannot read input image: {e}")


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(pixels, "RGB").save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def output_format(path: str) -> str:
    """The image format for an output path, from its extension (``-``: PNG)."""
    if path == "-":
        return "PNG"
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ImageError(f"cannot write {ext or 'files without an extension'}: use one of "
                         f"{', '.join(sorted(OUTPUT_FORMATS))} (lossless formats only)")
    return OUTPUT_FORMATS[ext]


def read_input(path: str) -> bytes:
    """All bytes of a file, or of standard input for ``-``."""
    if path == "-":
        if sys.stdin.isatty():
            raise ImageError("no input on standard input (give a file, or pipe data into '-')")
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory") from None
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from None


def check_output(output: str, input_path: str, force: bool) -> None:
    """Refuse an output that would destroy the input, or replace a file without ``--force``."""
    if output == "-":
        return
    if os.path.isdir(output):
        raise ImageError(f"{output} is a directory")
    if input_path != "-" and os.path.exists(output) and os.path.exists(input_path) \
            and os.path.samefile(output, input_path):
        raise ImageError("output is the input file; refusing to overwrite it")
    if os.path.exists(output) and not force:
        raise ImageError(f"{output} exists; use --force to replace it")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ImageError(f"cannot write {output}: folder {parent} does not exist")


def write_output(output: str, data: bytes) -> None:
    """Write bytes atomically (temporary file in the same folder, then rename), or to stdout for ``-``."""
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    parent = os.path.dirname(os.path.abspath(output))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rdeic-", suffix=".tmp", dir=parent)
    except OSError as e:
        raise ImageError(f"cannot write {output}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates the file 0600; give the output the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, output)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise ImageError(f"cannot write {output}: {e.strerror or e}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
