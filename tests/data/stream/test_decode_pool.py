"""Batch decoding: corrupt images reported, /dev/shm ring slots bit-identical to in-memory decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.stream.decode_pool import decode_batch, read_ring_slot


def _encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_decode_batch_marks_corrupt_images():
    good = _encode(_noise(16, 16), "JPEG")
    items = [(0, (good, b"")), (1, (b"not an image", good))]
    pixels, bad = decode_batch(items, size=(8, 8), augment=True, seed=1, epoch=0)
    assert pixels.shape == (2, 2, 3, 8, 8) and bad == [(1, 0)]
    assert not pixels[1, 0].any() and not pixels[0, 1].any()


@pytest.mark.parametrize("ring", [False, True])
def test_decode_batch_raises_what_is_not_a_data_error(tmp_path, ring):
    """Only undecodable bytes become zeros: a value that is not bytes at all (a bug upstream) raises."""
    items = [(0, (_encode(_noise(16, 16), "JPEG"),)), (1, (12345,))]
    (tmp_path / "ring").write_bytes(bytes(2 * 3 * 8 * 8 * 4))
    kwargs = {"ring": (str(tmp_path / "ring"), 0, 2 * 3 * 8 * 8 * 4)} if ring else {}
    with pytest.raises(TypeError):
        decode_batch(items, size=(8, 8), augment=False, seed=1, epoch=0, **kwargs)


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
