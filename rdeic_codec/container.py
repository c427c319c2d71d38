"""The ``.rdc`` container, format version 1 (specified in ``docs/format.md``).

    magic "RDC" | version u8 | model id 4 bytes | λ float16 LE | width varint | height varint |
    payload length varint | payload | CRC-32 (LE) of everything before it

A 768×512 image at 0.03 bpp has a 16-byte header and a 4-byte CRC trailer. Parsing never allocates
more than the bytes given, and every field is checked before the decoder sees it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"RDC"
VERSION = 1
MODEL_ID_BYTES = 4
MAX_SIDE = 1 << 20  # a hard format limit; the decoder's --max-pixels guard is much lower


class FormatError(ValueError):
    """The bytes are not a valid ``.rdc`` file (wrong magic, truncated, damaged, unsupported)."""


@dataclass(frozen=True)
class Header:
    model_id: bytes
    lam: float
    width: int
    height: int
    version: int = VERSION

    @property
    def model_id_hex(self) -> str:
        return self.model_id.hex()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(5):  # 5 bytes cover every value the format allows
        if pos + i >= len(data):
            raise FormatError(f"file is truncated inside the {what} field")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos + i + 1
    raise FormatError(f"the {what} field is malformed")


def quantize_lambda(lam: float) -> float:
    """The λ a file can store (float16): what the encoder actually uses."""
    return float(struct.unpack("<e", struct.pack("<e", lam))[0])


def pack(header: Header, payload: bytes) -> bytes:
    """Serialise a header and payload to ``.rdc`` bytes."""
    if len(header.model_id) != MODEL_ID_BYTES:
        raise ValueError("model id must be 4 bytes")
    if not (1 <= header.width <= MAX_SIDE and 1 <= header.height <= MAX_SIDE):
        raise ValueError(f"image size {header.width}×{header.height} is outside the format's range")
    body = b"".join([
        MAGIC, bytes([VERSION]), header.model_id, struct.pack("<e", header.lam),
        _varint(header.width), _varint(header.height), _varint(len(payload)), payload,
    ])
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and verify ``.rdc`` bytes; raises :class:`FormatError` with a one-line reason."""
    if len(data) == 0:
        raise FormatError("file is empty")
    if data[: len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(bytes(data)):
            raise FormatError("file is truncated inside the header")
        raise FormatError("not an .rdc file (wrong magic bytes)")
    pos = len(MAGIC)
    if len(data) < pos + 1 + MODEL_ID_BYTES + 2:
        raise FormatError("file is truncated inside the header")
    version = data[pos]
    if version != VERSION:
        raise FormatError(f"format version {version} is not supported (this rdeic reads version {VERSION}; "
                          f"a newer rdeic is needed)" if version > VERSION else f"unknown format version {version}")
    pos += 1
    model_id = bytes(data[pos : pos + MODEL_ID_BYTES])
    pos += MODEL_ID_BYTES
    (lam,) = struct.unpack("<e", data[pos : pos + 2])
    pos += 2
    width, pos = _read_varint(data, pos, "width")
    height, pos = _read_varint(data, pos, "height")
    length, pos = _read_varint(data, pos, "payload length")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise FormatError(f"declared image size {width}×{height} is invalid")
    if not (lam > 0 and lam < 65504):
        raise FormatError(f"declared rate parameter {lam} is invalid")
    end = pos + length
    if end + 4 > len(data):
        raise FormatError(f"file is truncated: header declares {length} payload bytes, "
                          f"{max(len(data) - pos - 4, 0)} present")
    if end + 4 < len(data):
        raise FormatError(f"{len(data) - end - 4} unexpected bytes after the end of the stream")
    (crc,) = struct.unpack("<I", data[end : end + 4])
    if zlib.crc32(data[:end]) != crc:
        raise FormatError("file is damaged (CRC-32 mismatch)")
    return Header(model_id=model_id, lam=float(lam), width=width, height=height, version=version), bytes(data[pos:end])


def header_size(data: bytes) -> int:
    """Bytes before the payload in valid ``.rdc`` bytes (for reports)."""
    _, payload = unpack(data)
    return len(data) - len(payload) - 4
