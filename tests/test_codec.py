"""Round trips through encode and decode with a tiny random-weight model."""

import os
import stat

import numpy as np
import pytest
import torch

from rdeic_codec import codec, container

from conftest import smooth_image


@pytest.mark.parametrize("size", [(64, 64), (70, 100), (1, 1), (33, 130)])
def test_original_size_is_restored(tiny_model, size):
    image = smooth_image(*size)
    result = codec.encode(tiny_model, image, 0.5)
    out = codec.decode(tiny_model, result.data, steps=2)
    assert out.shape == image.shape and out.dtype == np.uint8
    header, _ = container.unpack(result.data)
    assert (header.width, header.height) == (size[1], size[0])


@pytest.mark.parametrize("size", [(64, 64), (70, 100), (1, 1)])
def test_the_shuffle_autoencoder_model_round_trips_deterministically(tiny_shuffle_model, size):
    image = smooth_image(*size)
    data = codec.encode(tiny_shuffle_model, image, 0.5).data
    a = codec.decode(tiny_shuffle_model, data, steps=2)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, codec.decode(tiny_shuffle_model, data, steps=2))
    assert codec.encode(tiny_shuffle_model, image, 0.5).data == data


def test_decoding_twice_gives_the_same_pixels(tiny_model):
    data = codec.encode(tiny_model, smooth_image(64, 128), 1.0).data
    for steps, detail in [(5, 1.0), (2, 0.5), (0, 1.0)]:
        a = codec.decode(tiny_model, data, steps=steps, detail=detail)
        b = codec.decode(tiny_model, data, steps=steps, detail=detail)
        assert np.array_equal(a, b)


def test_detail_changes_the_output(tiny_model):
    data = codec.encode(tiny_model, smooth_image(64, 64), 1.0).data
    assert not np.array_equal(codec.decode(tiny_model, data, steps=2, detail=0.0),
                              codec.decode(tiny_model, data, steps=2, detail=1.0))


def test_lambda_outside_the_range_is_refused(tiny_model):
    with pytest.raises(codec.CodecError, match="range"):
        codec.encode(tiny_model, smooth_image(64, 64), 5.0)


def test_file_from_another_model_is_refused(tiny_model):
    data = codec.encode(tiny_model, smooth_image(64, 64), 1.0).data
    header, payload = container.unpack(data)
    other = container.pack(container.Header(b"\xff\xff\xff\xff", header.lam, header.width, header.height), payload)
    with pytest.raises(codec.CodecError, match="made with model ffffffff"):
        codec.decode(tiny_model, other)


def test_declared_size_over_the_limit_is_refused_before_decoding(tiny_model):
    header = container.Header(tiny_model.model_id, 1.0, 100000, 100000)
    with pytest.raises(codec.CodecError, match="max-pixels"):
        codec.decode(tiny_model, container.pack(header, b"\x00" * 8))


def test_more_lambda_more_bits(tiny_model):
    # Gains start out increasing with λ, so even a random model spends more bits at higher λ.
    image = smooth_image(128, 128)
    sizes = [len(codec.encode(tiny_model, image, lam).data) for lam in (0.1, 0.5, 2.0)]
    assert sizes[0] < sizes[2]


def test_written_model_files_follow_the_umask(tmp_path):
    from conftest import make_tiny_model

    old = os.umask(0o022)
    try:
        folder = make_tiny_model(str(tmp_path / "m"))
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in os.listdir(folder)}
    assert modes and all(mode == 0o644 for mode in modes.values()), modes


def test_half_precision_decodes_the_same_files_to_nearly_the_same_pixels(tiny_model, tiny_model_dir):
    from rdeic_codec.model import load_model

    half = load_model(tiny_model_dir, half=True)
    assert half.unet.dtype == half.vae.dtype == torch.float16
    assert next(half.compression.parameters()).dtype == torch.float32  # it defines the bitstream
    image = smooth_image(64, 96)
    data = codec.encode(tiny_model, image, 1.0).data
    full = codec.decode(tiny_model, data, steps=2).astype(float)
    rounded = codec.decode(half, data, steps=2).astype(float)
    assert rounded.shape == full.shape
    assert np.abs(rounded - full).mean() < 1.0  # float16 rounding, not a different image
    # A file written in half precision is an ordinary file: the float32 model decodes it.
    half_data = codec.encode(half, image, 1.0).data
    assert codec.decode(tiny_model, half_data, steps=2).shape == image.shape
    assert abs(len(half_data) - len(data)) <= 0.05 * len(data) + 4


def test_an_anchored_control_module_starts_from_z_c_and_detail_0_keeps_it(tmp_path):
    """The anchored prediction (networks/control.py): untrained, one step (at the relay start) decodes to
    z_c's pixels; trained, the steps change the image, ``--detail 0`` gives z_c back and the same file
    the same pixels."""
    from rdeic_codec.model import load_model

    from conftest import make_tiny_model

    model = load_model(make_tiny_model(str(tmp_path / "m"), profile="tiny-anchored"))
    data = codec.encode(model, smooth_image(64, 96), 0.5).data
    z_c = codec.decode(model, data, steps=0)
    assert np.array_equal(codec.decode(model, data, steps=1), z_c)
    torch.nn.init.normal_(model.control.anchor_head.weight, std=0.05)  # as if trained
    stepped = codec.decode(model, data, steps=2)
    assert not np.array_equal(stepped, z_c)
    assert np.array_equal(codec.decode(model, data, steps=2), stepped)
    assert np.array_equal(codec.decode(model, data, steps=5, detail=0.0), z_c)
    sharper = codec.decode(model, data, steps=2, detail=1.5)
    assert np.abs(sharper.astype(int) - z_c).mean() > np.abs(stepped.astype(int) - z_c).mean()
