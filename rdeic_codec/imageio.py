"""Reading input images and writing outputs without ever leaving a partial file.

Input policy (what a user of an image codec expects, stated rather than silent):
* any format Pillow reads (PNG, JPEG, WebP, TIFF, BMP, ...), 8- or 16-bit, grayscale, palette, CMYK;
* EXIF orientation is applied, so the image is coded as it is displayed;
* an embedded ICC profile (RGB, grayscale or CMYK; a Display-P3 phone photo, an Adobe RGB camera
  file) is applied: the pixels are converted to sRGB (LittleCMS through Pillow's ImageCms, relative
  colorimetric intent), so the decoded image, which is sRGB, shows the colours of the original; an
  unreadable profile, or one that does not fit the image's mode, is ignored with a warning;
* alpha (an alpha channel, or a PNG/GIF transparent colour) is not coded: transparent pixels are
  composited over white, and a warning says so;
* grayscale images are coded as RGB and decode to RGB;
* no metadata is coded: EXIF (after its orientation is applied), XMP, IPTC, text chunks and the ICC
  profile itself are dropped. At these rates they would cost more than the image (EXIF of a phone
  photo alone is often 10-60 kB, the image 1-4 kB).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
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
    pixels: np.ndarray  # (H, W, 3) uint8 sRGB
    had_alpha: bool
    source_mode: str
    colour_note: str | None = None  # what happened to an embedded ICC profile, for a warning; None: nothing to say
    converted_from: str | None = None  # the description of the ICC profile converted to sRGB


def _to_srgb(im, icc: bytes):
    """Convert a PIL image tagged with ICC profile ``icc`` to sRGB.

    Returns (image, profile description, note): the image is RGB, or RGBA when it had alpha, which
    is carried over unchanged; note is None, or why the profile was ignored (image returned as is).
    """
    from PIL import Image, ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = source.profile.xcolor_space.strip()
        name = (source.profile.profile_description or "unnamed profile").strip()
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError) as e:
        return im, None, f"the embedded ICC profile cannot be read ({e}); colours taken as sRGB"
    alpha = None
    if im.mode in _GRAY16 and space == "GRAY":
        im = Image.fromarray(_gray16_to_8(im))
    if im.mode in ("P", "PA"):  # palette entries are colours in the profile's space
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA"):
        alpha = im.getchannel("A")
        im = im.convert(im.mode[:-1])
    if im.mode == "RGB" and "transparency" in im.info:  # a tRNS colour key names a colour before conversion
        alpha = im.convert("RGBA").getchannel("A")
    wanted = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}.get(space)
    if im.mode != wanted:
        unchanged = im if alpha is None else _with_alpha(im, alpha)
        return unchanged, None, (f"the embedded ICC profile ({space or 'unknown'} colour space) does not fit "
                                 f"a {im.mode} image; colours taken as sRGB")
    try:
        out = ImageCms.profileToProfile(im, source, _srgb_profile(), outputMode="RGB",
                                        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (OSError, ValueError, ImageCms.PyCMSError) as e:
        unchanged = im if alpha is None else _with_alpha(im, alpha)
        return unchanged, None, f"the embedded ICC profile cannot be applied ({e}); colours taken as sRGB"
    out.info.pop("transparency", None)
    return (out if alpha is None else _with_alpha(out.convert("RGB"), alpha)), name, None


def _with_alpha(im, alpha):
    im = im.convert("RGB" if im.mode != "L" else "L")
    im.putalpha(alpha)
    return im


_SRGB = None


def _srgb_profile():
    global _SRGB
    if _SRGB is None:
        from PIL import ImageCms

        _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB


_GRAY16 = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _gray16_to_8(im) -> np.ndarray:
    # 16-bit data spans 0..65535; 32-bit integer and float data are taken as 0..65535 too.
    arr = np.asarray(im, dtype=np.float64)
    return np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)


def _to_rgb8(im) -> tuple[np.ndarray, bool]:
    from PIL import Image

    mode = im.mode
    # "transparency" in L/RGB/P images: a tRNS colour key or palette alpha, which convert("RGBA") applies.
    had_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or \
        (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if mode in _GRAY16:
        return np.repeat(_gray16_to_8(im)[:, :, None], 3, axis=2), False
    if had_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")), True
    if mode == "RGB;16" or mode.startswith("RGB") and mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), False  # convert("RGB") of RGB copies


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
            icc = im.info.get("icc_profile")
            im = ImageOps.exif_transpose(im)
            name = note = None
            if icc:
                im, name, note = _to_srgb(im, icc)
            pixels, had_alpha = _to_rgb8(im)
        except errors as e:
            raise _image_error(e) from None
    if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError("input image is empty")
    return LoadedImage(np.ascontiguousarray(pixels), had_alpha, mode, note, name)


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
    """The image format for an output path, from its extension (``-``, or a device or pipe without one: PNG)."""
    if path == "-":
        return "PNG"
    ext = os.path.splitext(path)[1].lower()
    if not ext and is_stream(path):  # /dev/null, a FIFO: what standard output gets
        return "PNG"
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


# Names of an open file descriptor: the file behind one (`> file`) is the caller's, written into.
FD_PATHS = ("/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/self/fd/")


def is_stream(path: str) -> bool:
    """Whether ``path`` (links followed) exists and is not a regular file or a folder: a device, a FIFO, a
    socket. Such an output is written into; a file renamed over it would replace it."""
    if path.startswith(FD_PATHS):  # /dev/stdout into a shell's file: write into it, as into the fd
        return os.path.exists(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))



class WriteError(ImageError):
    """An output that could not be written. ``errno`` tells the callers that act on the cause: EPIPE (the
    reader went away) ends the command line quietly, ENOSPC (disk full) stops a batch."""

    def __init__(self, output: str, error: OSError):
        super().__init__(f"cannot write {output}: {error.strerror or error}")
        self.errno = error.errno


def check_output(output: str, input_path: str, force: bool) -> None:
    """Refuse an output that would destroy the input, or replace a file without ``--force``.

    Devices and pipes are written into, not replaced, so they need no ``--force``.
    """
    if output == "-":
        return
    if os.path.isdir(output):
        raise ImageError(f"{output} is a directory")
    if input_path != "-" and os.path.exists(output) and os.path.exists(input_path) \
            and os.path.samefile(output, input_path):
        raise ImageError("output is the input file; refusing to overwrite it")
    if is_stream(output):
        return
    if os.path.exists(output) and not force:
        raise ImageError(f"{output} exists; use --force to replace it")
    parent = os.path.dirname(os.path.realpath(output))  # a link's target is what gets written
    if not os.path.isdir(parent):
        raise ImageError(f"cannot write {output}: folder {parent} does not exist")


def write_output(output: str, data: bytes) -> None:
    """Write ``data`` to ``output`` completely, or raise WriteError.

    ``-`` is standard output; a device, FIFO or socket is written into as it is; a file (or the file a
    link points to) is replaced atomically: a temporary file in its folder, then a rename, so a failure
    leaves the old file or nothing.
    """
    if output == "-":
        _write_stdout(data)
    elif is_stream(output):
        _write_into(output, data)
    else:
        _write_replacing(output, data)


def _write_stdout(data: bytes) -> None:
    out = sys.stdout.buffer
    try:
        sys.stdout.flush()
        try:
            fd = out.fileno()
        except (AttributeError, io.UnsupportedOperation):  # a stream without a file (a test's capture)
            out.write(data)
            out.flush()
            return
        # Straight to the file descriptor: nothing stays in Python's buffer for the flush at exit to
        # retry (and print 'Exception ignored ...' for) after a failure, and a short write is not lost.
        _write_all(fd, data)
    except OSError as e:
        raise WriteError("standard output", e) from None


def _write_into(output: str, data: bytes) -> None:
    # No O_CREAT: if the device or pipe has gone, fail rather than leave a non-atomic regular file.
    try:
        fd = os.open(output, os.O_WRONLY | os.O_NOCTTY)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        raise WriteError(output, e) from None


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is taken: a pipe whose reader leaves takes part of the data, then EPIPE."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_replacing(output: str, data: bytes) -> None:
    target = os.path.realpath(output)  # a link is kept; the file it points to is replaced
    parent = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rdeic-", suffix=".tmp", dir=parent)
    except OSError as e:
        raise WriteError(output, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates the file 0600; give the output the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):  # it may be gone already, with its folder
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise WriteError(output, e) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
