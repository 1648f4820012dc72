"""Frame transforms (decode, resize, augmentation) and BOUNDS_Q99 normalization, with literal values."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.frames import (
    AugmentParams,
    apply_color_augment,
    decode_batch,
    decode_resize,
    frame_rng,
    process_frame,
    read_ring_slot,
)
from pipeline.data.normalize import NormStats, normalize_bounds_q99, parse_dataset_norm


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


def test_process_frame_layout_and_padding():
    x = process_frame(_encode(_solid(8, 8, (255, 0, 0)), "PNG"), (4, 4))
    assert x.shape == (3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(process_frame(b"", (4, 5)), np.zeros((3, 4, 5), np.float32))


def test_decode_batch_marks_corrupt_images():
    good = _encode(_noise(16, 16), "JPEG")
    items = [(0, (good, b"")), (1, (b"not an image", good))]
    pixels, bad = decode_batch(items, size=(8, 8), augment=True, seed=1, epoch=0)
    assert pixels.shape == (2, 2, 3, 8, 8) and bad == [(1, 0)]
    assert not pixels[1, 0].any() and not pixels[0, 1].any()


@pytest.mark.parametrize("augment", [False, True])
def test_ring_slots_match_in_memory_decode_and_zero_stale_bytes(tmp_path, augment):
    good = _encode(_noise(16, 16), "JPEG")
    items = [(0, (good, b"")), (1, (b"not an image", good))]
    expect, bad = decode_batch(items, size=(8, 8), augment=augment, seed=1, epoch=0)
    path, slot_bytes = tmp_path / "ring", 2 * 2 * 3 * 8 * 8 * 4
    path.write_bytes(b"\xff" * 3 * slot_bytes)  # stale bytes everywhere: zeros must be written, not assumed
    handle, bad2 = decode_batch(items, size=(8, 8), augment=augment, seed=1, epoch=0,
                                ring=(str(path), 2, slot_bytes))
    got = read_ring_slot(path.read_bytes(), handle, slot_bytes)
    assert got.dtype == np.float32 and bad2 == bad == [(1, 0)]
    np.testing.assert_array_equal(got, expect)  # bit-identical, zeros for b"" and the corrupt image
    with pytest.raises(ValueError, match="too small"):
        decode_batch(items, size=(8, 8), augment=augment, seed=1, epoch=0, ring=(str(path), 0, 64))


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


# ------------------------------------------------------------------------------------ normalization
def _stats(**kw) -> NormStats:
    base = dict(q01=[-0.1, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0], q99=[0.1, 0.4, 2.0, 1.0, 1.0, 1.0, 1.0],
                min=[-0.2, -1.0, -3.0, 0.5, 0.0, 0.0, 0.0], max=[0.2, 1.0, 3.0, 0.5, 1.0, 1.0, 1.0],
                mask=[True] * 6 + [False])
    base.update(kw)
    return NormStats(**{k: np.asarray(v, bool if k == "mask" else np.float32) for k, v in base.items()})


def test_bounds_q99_literal():
    x = np.array([0.05, 0.5, -1.0, 0.5, 0.25, 0.0, 1.0], np.float32)
    # d0: 2*(0.05+0.1)/0.2-1 = 0.5 | d1: 2*0.5/0.4-1 = 1.5 -> clip 1 | d2: 2*1/4-1 = -0.5
    # d3: min == max -> 0 | d4: 2*0.25-1 = -0.5 | d5: -1 | d6: gripper unmasked -> 1.0 passed through
    np.testing.assert_allclose(normalize_bounds_q99(x, _stats()), [0.5, 1.0, -0.5, 0.0, -0.5, -1.0, 1.0], atol=1e-6)
    # constant gripper column (min == max == 1): forced to 0 despite the mask
    const_grip = _stats(min=[-0.2, -1.0, -3.0, 0.5, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(normalize_bounds_q99(x, const_grip)[6], 0.0)
    batch = normalize_bounds_q99(np.stack([x, x]), _stats())
    assert batch.shape == (2, 7) and batch.dtype == np.float32


def test_parse_dataset_norm_openvla_format():
    entry = {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7, "min": [0.0] * 7, "max": [1.0] * 7,
                        "mean": [0.5] * 7, "std": [0.1] * 7, "mask": [True] * 6 + [False]},
             "proprio": {"q01": [0.0] * 2, "q99": [1.0] * 2, "min": [0.0] * 2, "max": [2.0] * 2},
             "num_transitions": 12, "num_trajectories": 2}
    norm = parse_dataset_norm({"toy": entry}, "toy")
    assert norm.action.mask.tolist() == [True] * 6 + [False] and norm.proprio.mask.all()
    assert norm.num_transitions == 12
    np.testing.assert_allclose(normalize_bounds_q99([0.25, 3.0], norm.proprio), [-0.5, 1.0])
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="other"):
        parse_dataset_norm({"toy": entry, "x": entry}, "other")
