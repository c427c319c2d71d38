"""The .rdc container (docs/format.md): layout, header size, refusal messages."""

import struct
import zlib

import pytest

from rdeic_codec.container import MAGIC, FormatError, Header, pack, quantize_lambda, unpack

HEADER = Header(model_id=bytes.fromhex("0123abcd"), lam=0.25, width=768, height=512)


def test_roundtrip():
    data = pack(HEADER, b"\x01\x02\x03\x04" * 10)
    header, payload = unpack(data)
    assert header == HEADER and payload == b"\x01\x02\x03\x04" * 10


def test_typical_header_is_at_most_16_bytes():
    payload = bytes(1476)  # 768×512 at 0.03 bpp
    data = pack(HEADER, payload)
    assert len(data) - len(payload) - 4 <= 16  # the 4-byte CRC-32 trailer aside


def test_layout():
    data = pack(HEADER, b"abcd")
    assert data[:3] == MAGIC and data[3] == 1 and data[4:8] == HEADER.model_id
    assert struct.unpack("<e", data[8:10])[0] == 0.25
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_lambda_is_stored_as_float16():
    assert quantize_lambda(0.25) == 0.25
    assert quantize_lambda(0.1) == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: b"", "empty"),
    (lambda d: b"PNG" + d[3:], "magic"),
    (lambda d: d[:3] + b"\x02" + d[4:], "newer rdeic"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "CRC"),
    (lambda d: d + b"x", "unexpected bytes"),
])
def test_refusals_name_the_problem(mutate, message):
    with pytest.raises(FormatError, match=message):
        unpack(mutate(pack(HEADER, b"\x00" * 40)))
