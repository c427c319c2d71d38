"""Rate targets (`rdeic encode --size/--bpp`): the largest file not over a byte budget."""

import numpy as np
import pytest

from conftest import smooth_image
from rdeic_codec import codec, target
from rdeic_codec.container import unpack


@pytest.mark.parametrize("text, expected", [("1500", 1500), ("1.5k", 1500), ("2K", 2000), ("2M", 2_000_000),
                                            ("800B", 800), (" 3kb ", 3000), (".5k", 500)])
def test_sizes_parse_as_documented(text, expected):
    assert target.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "k", "-5", "1.5x", "0", "1e3", "0.4"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError):
        target.parse_size(text)


def test_lambda_grid_is_every_storable_value_in_the_range():
    grid = target.lambda_grid(0.1, 2.0)
    assert grid[0] == np.float16(0.1) and grid[-1] == 2.0
    assert np.all(np.diff(grid) > 0)
    assert np.array_equal(grid, grid.astype(np.float16).astype(float))  # float16 values, as the file holds
    assert len(grid) == int(np.float16(2.0).view(np.uint16)) - int(np.float16(0.1).view(np.uint16)) + 1


@pytest.fixture(scope="module")
def image():
    return smooth_image(192, 256)


def test_target_inside_the_range_gives_the_largest_probe_that_fits(tiny_model, image):
    smallest = len(codec.encode(tiny_model, image, 0.1).data)
    largest = len(codec.encode(tiny_model, image, 2.0).data)
    budget = (smallest + largest) // 2
    found = target.encode_to_size(tiny_model, image, budget)
    data = found.result.data
    assert smallest <= len(data) <= budget and not found.above_largest
    assert len(data) == max(size for _, size in found.probes if size <= budget)
    assert 2 < len(found.probes) <= target.MAX_PROBES
    # The file is exactly what --lambda at the reported λ makes, and its header says that λ.
    assert codec.encode(tiny_model, image, found.result.lam).data == data
    assert unpack(data)[0].lam == found.result.lam
    assert codec.decode(tiny_model, data, steps=1).shape == image.shape


def test_target_below_the_smallest_file_is_an_error(tiny_model, image):
    smallest = len(codec.encode(tiny_model, image, 0.1).data)
    with pytest.raises(target.TargetError, match=f"below the smallest file.*{smallest} bytes"):
        target.encode_to_size(tiny_model, image, smallest - 1)


def test_target_above_the_largest_file_gives_the_largest(tiny_model, image):
    largest = codec.encode(tiny_model, image, 2.0).data
    found = target.encode_to_size(tiny_model, image, len(largest) + 1000)
    assert found.above_largest and found.result.data == largest and found.probes[-1][0] == 2.0
    exact = target.encode_to_size(tiny_model, image, len(largest))
    assert not exact.above_largest and exact.result.data == largest


def test_bpp_budget_counts_the_whole_file(tiny_model, image):
    h, w = image.shape[:2]
    result, found = target.encode_at_rate(tiny_model, image, bpp=0.06)
    assert found.target_bytes == int(0.06 * w * h / 8) and result.bpp <= 0.06


def test_one_rate_at_a_time(tiny_model, image):
    with pytest.raises(codec.CodecError, match="one of"):
        target.encode_at_rate(tiny_model, image, lam=0.5, size=1000)
    with pytest.raises(codec.CodecError, match="--bpp must be a positive"):
        target.encode_at_rate(tiny_model, image, bpp=-1.0)


def test_a_model_of_one_fixed_lambda_cannot_search(tiny_model, image, monkeypatch):
    monkeypatch.setattr(type(tiny_model.compression), "lambda_range", property(lambda self: None))
    monkeypatch.setitem(tiny_model.config, "lambda", 2.0)
    with pytest.raises(target.TargetError, match="one fixed λ \\(2\\).*--lambda"):
        target.encode_to_size(tiny_model, image, 500)
