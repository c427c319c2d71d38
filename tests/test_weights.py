"""rdeic_codec.weights: safetensors files read tensor by tensor, the same tensors as the library's."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from rdeic_codec.weights import WeightFileError, iter_tensors


@pytest.fixture()
def weight_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g).half(),
        "conv.bias": torch.randn(8, generator=g),
        "emb": torch.randn(5, 4, generator=g).bfloat16(),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "wide": torch.randn(3, generator=g).double(),
    }
    path = str(tmp_path / "w.safetensors")
    save_file(state, path)
    return path


def test_tensors_as_stored(weight_file):
    want = load_file(weight_file)
    got = dict(iter_tensors(weight_file, lambda key, dtype: None))
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape and torch.equal(got[key], value), key


def test_cast_to_the_running_dtype(weight_file):
    want = load_file(weight_file)
    got = dict(iter_tensors(weight_file, lambda key, dtype: torch.float32 if dtype.is_floating_point else None))
    for key, value in want.items():
        expected = value.float() if value.is_floating_point() else value
        assert got[key].dtype == expected.dtype and torch.equal(got[key], expected), key


def test_damaged_files_are_refused(weight_file, tmp_path):
    data = open(weight_file, "rb").read()
    for name, damaged in (("truncated", data[:-10]), ("no header", b"\x00" * 4), ("pickle-like", b"\x80\x04" + data[2:]),
                          ("huge header length", (2**40).to_bytes(8, "little") + data[8:])):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(damaged)
        with pytest.raises(WeightFileError):
            list(iter_tensors(str(path), lambda key, dtype: None))
