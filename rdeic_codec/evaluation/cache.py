"""The baseline cache of ``rdeic eval``: a baseline's results on a photo, computed once.

What a baseline codec makes of a photo at one setting does not depend on the model under test; only
which setting is chosen does (the largest file not exceeding the model's file). So for each
(photo, baseline) one small JSON file keeps, for every setting the rate search
(:func:`~.baselines.bisect_settings`) has tried, the file's size, bpp and encode/decode seconds,
and for the settings that were chosen also the file itself (base64: a few kB at rdeic's rates) and
the image metrics (PSNR, MS-SSIM, NIQE, ...). A later run asks the bisection the same questions and
gets the answers from the file; it encodes only settings never tried on that photo and measures only
settings never chosen before.

An entry is found by its key, which is stored in the file and checked on reading:

* ``format``: :data:`CACHE_FORMAT`;
* ``pixels_sha256``: SHA-256 of the decoded RGB pixels with their shape (so a re-saved PNG with the
  same pixels hits, and any changed pixel misses);
* ``codec`` and ``options``: the baseline's name and constructor options (AVIF's speed);
* ``tool_version``: the encoder's version line (``avifenc --version``; Pillow's for JPEG);
* ``pillow``: Pillow's version (it writes the tools' input PNG, reads their output, and resizes for
  ``avif-half``).

The cache cannot see a change to a codec's command line or to a metric's code: bump
:data:`CACHE_FORMAT` with such a change. Entries are written to a temporary file and renamed, so a
parallel or killed run never leaves half a file; an unreadable or mismatched file is a miss (it is
recomputed and replaced), never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rdeic/eval``, else ``~/.cache/rdeic/eval`` (the XDG convention)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rdeic" / "eval"


def pixels_sha256(pixels: np.ndarray) -> str:
    """SHA-256 of an image's pixels and shape.

    Args:
        pixels: uint8 (H, W, 3) RGB, as ``rdeic eval`` codes them.
    """
    digest = hashlib.sha256(f"{pixels.shape}{pixels.dtype}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def setting_key(setting: float) -> str:
    """A setting as a JSON object key ('63.0', '2.5'): the same float always gives the same text."""
    return repr(float(setting))


@dataclass
class Entry:
    """One (photo, baseline) entry.

    Attributes:
        key: the key (see the module docstring).
        settings: per :func:`setting_key`: ``bytes``, ``bpp``, ``encode_s``, ``decode_s``; for chosen
            settings also ``data`` (the file, base64) and ``metrics`` ({metric name: value}).
        changed: something was added since it was read (it needs writing).
    """

    key: dict
    settings: dict = field(default_factory=dict)
    changed: bool = False


class BaselineCache:
    """The entries in one folder (None: no cache; every entry starts empty and nothing is written).

    Args:
        folder: the cache folder (created on the first write).
    """

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None
        self.unreadable = 0  # entries that existed but could not be used (corrupt, foreign)

    @staticmethod
    def make_key(pixels_digest: str, codec_name: str, options: dict, tool_version: str,
                 pillow_version: str) -> dict:
        """The key of an entry.

        Args:
            pixels_digest: :func:`pixels_sha256` of the photo.
            codec_name: the baseline's name ('avif').
            options: the codec's constructor options (``vars(codec)``), JSON-able.
            tool_version: the encoder's version line.
            pillow_version: ``PIL.__version__``.
        """
        return {"format": CACHE_FORMAT, "pixels_sha256": pixels_digest, "codec": codec_name,
                "options": options, "tool_version": tool_version, "pillow": pillow_version}

    def path(self, key: dict) -> Path:
        """The entry's file: the codec name (for people browsing) and a hash of the whole key."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.folder / f"{key['codec']}-{digest[:32]}.json"

    def load(self, key: dict) -> Entry:
        """The stored entry for ``key``, or an empty one (no cache, no file, or a file not usable)."""
        if self.folder is None:
            return Entry(key)
        path = self.path(key)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return Entry(key)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            self.unreadable += 1
            return Entry(key)
        if not _valid(doc, key):  # truncated by hand, another format, or a hash collision
            self.unreadable += 1
            return Entry(key)
        return Entry(key, doc["settings"])

    def save(self, entry: Entry) -> None:
        """Write the entry if it changed: a temporary file in the same folder, then a rename."""
        if self.folder is None or not entry.changed:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": entry.key, "settings": entry.settings}, sort_keys=True)
        path = self.path(entry.key)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            mask = os.umask(0)  # mkstemp makes 0600; a cache folder may be shared, so use what open() would
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        entry.changed = False


def _valid(doc, key: dict) -> bool:
    """True when ``doc`` is an entry for ``key`` with every per-setting field a run reads."""
    if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("settings"), dict):
        return False
    numbers = ("bytes", "bpp", "encode_s", "decode_s")
    for record in doc["settings"].values():
        if not isinstance(record, dict) or not all(isinstance(record.get(k), (int, float)) for k in numbers):
            return False
        if "data" in record and not isinstance(record["data"], str):
            return False
        if "metrics" in record and not isinstance(record["metrics"], dict):
            return False
    return True
