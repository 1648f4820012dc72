"""Frame transforms (decode, resize, augmentation), with literal values."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.io.errors import CorruptDataError, CorruptImageError
from pipeline.data.stream.frames import (
    AugmentParams,
    apply_color_augment,
    decode_resize,
    frame_rng,
    process_frame,
)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def _solid(h: int, w: int, rgb=(200, 100, 50)) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)).copy()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- decode
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_resize_shape_and_color(fmt):
    out = decode_resize(_encode(_solid(96, 64), fmt), (16, 24))
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [200, 100, 50], atol=3)


def test_large_jpeg_is_decoded_at_full_scale():
    # 4x downscale: no reduced-scale (draft) JPEG decode, so an inference frame decoded in full and
    # resized with the same Lanczos filter gets exactly the training pixels
    smooth = np.asarray(Image.fromarray(_noise(8, 8)).resize((128, 128), Image.Resampling.BILINEAR))
    data = _encode(smooth, "JPEG")
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(decode_resize(data, (32, 32)), full)


@pytest.mark.parametrize("data", [b"not an image", b"\xff\xd8\xff\xe0 not really a jpeg", b"\x89PNG\r\n\x1a\n"])
def test_undecodable_bytes_are_a_data_error(data):
    with pytest.raises(CorruptImageError, match="do not decode"):
        decode_resize(data, (8, 8))
    with pytest.raises(CorruptDataError):
        process_frame(data, (8, 8), rng=frame_rng(0, 0, 0))


def test_process_frame_layout_and_padding():
    x = process_frame(_encode(_solid(8, 8, (255, 0, 0)), "PNG"), (4, 4))
    assert x.shape == (3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(process_frame(b"", (4, 5)), np.zeros((3, 4, 5), np.float32))


# ------------------------------------------------------------------------------------- augmentation
def test_color_augment_literal_values():
    identity = AugmentParams(crop_x=0, crop_y=0, brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0)
    gray = np.full((2, 2, 3), 0.5, np.float32)
    np.testing.assert_allclose(apply_color_augment(gray, identity), gray, atol=1e-6)
    bright = AugmentParams(crop_x=0, crop_y=0, brightness=0.1, contrast=1.0, saturation=1.2, hue=0.05)
    np.testing.assert_allclose(apply_color_augment(gray, bright), 0.6, atol=1e-6)  # gray: no sat/hue effect
    two = np.array([[[0.2] * 3, [0.6] * 3]], np.float32)  # mean 0.4; contrast 1.5 -> 0.4 + 1.5*(x-0.4)
    contrast = AugmentParams(crop_x=0, crop_y=0, brightness=0.0, contrast=1.5, saturation=1.0, hue=0.0)
    np.testing.assert_allclose(apply_color_augment(two, contrast), [[[0.1] * 3, [0.7] * 3]], atol=1e-6)
    red = np.array([[[1.0, 0.0, 0.0]]], np.float32)
    third = AugmentParams(crop_x=0, crop_y=0, brightness=0.0, contrast=1.0, saturation=1.0, hue=1 / 3)
    np.testing.assert_allclose(apply_color_augment(red, third), [[[0.0, 1.0, 0.0]]], atol=1e-5)
    desat = AugmentParams(crop_x=0, crop_y=0, brightness=0.0, contrast=1.0, saturation=0.5, hue=0.0)
    np.testing.assert_allclose(apply_color_augment(red, desat), [[[1.0, 0.5, 0.5]]], atol=1e-6)  # S 1 -> 0.5


def test_augmentation_is_seeded_per_sample():
    data = _encode(_noise(32, 32, 3), "JPEG")
    a = process_frame(data, (16, 16), rng=frame_rng(7, 2, 100))
    b = process_frame(data, (16, 16), rng=frame_rng(7, 2, 100))
    c = process_frame(data, (16, 16), rng=frame_rng(7, 2, 101))
    d = process_frame(data, (16, 16), rng=frame_rng(7, 3, 100))
    plain = process_frame(data, (16, 16))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d) and not np.array_equal(a, plain)
    assert a.min() >= 0.0 and a.max() <= 1.0
