"""Building blocks of the OXE standardization, checked against hand-computed values."""

import math
import zlib

import numpy as np
import pytest

from pipeline.data.oxe import transforms as tf

HALF = math.sqrt(0.5)  # sin(45 deg) = cos(45 deg)


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ([0, 0.5, 0, -0.5, 0], [1, 0, 0, 1, 1]),  # first event "close" -> earlier steps open
        ([0, -0.5, 0, 0.5], [0, 1, 1, 0]),  # first event "open" -> earlier steps closed
        ([0, 0.05, -0.09, 0], [1, 1, 1, 1]),  # no event beyond +-0.1 -> all open
        ([1.0, 0.0, 0.0], [0, 0, 0]),
    ],
)
def test_rel2abs(rel, expected):
    out = tf.rel2abs_gripper(np.array(rel, np.float32))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_rel2abs_inverse():
    np.testing.assert_array_equal(tf.rel2abs_inverse(np.array([1, 0, 0, 1, 1])), [0, 1, 0, -1, 0])
    np.testing.assert_array_equal(tf.rel2abs_inverse(np.array([0, 0, 1])), [1, 0, -1])


def test_invert_and_clip01():
    np.testing.assert_allclose(tf.invert(np.array([1.0, 0.0, 0.25])), [0.0, 1.0, 0.75])
    np.testing.assert_array_equal(tf.clip01(np.array([-1.0, 1.0, 0.5, 2.0])), [0.0, 1.0, 0.5, 1.0])
    np.testing.assert_array_equal(tf.clip01_inverse(np.array([0.0, 1.0, 0.5])), [-1.0, 1.0, 0.5])


def test_binarize_backfill():
    x = np.array([1.0, 0.5, 0.5, 0.0, 0.96, 0.02, 0.3, 0.6], np.float32)
    # 0.5s take the next decisive value (0.0); the trailing 0.3 takes the raw last value 0.6
    np.testing.assert_allclose(tf.binarize_backfill(x), [1, 0, 0, 0, 1, 0, 0.6, 0.6])
    np.testing.assert_allclose(tf.binarize_backfill(x, round_tail=True), [1, 0, 0, 0, 1, 0, 1, 1])


def test_bridge_relabel():
    actions = np.array([[9, 9, 9, 9, 9, 9, 1], [9, 9, 9, 9, 9, 9, 0], [9, 9, 9, 9, 9, 9, 1]], np.float32)
    states = np.array([[0, 0, 0, 0, 0, 3.1], [1, 2, 3, 0, 0, -3.1], [1, 2, 4, 0.5, 0, -3.0]], np.float32)
    out = tf.bridge_relabel(actions, states)
    np.testing.assert_allclose(out, [[1, 2, 3, 0, 0, -6.2, 1], [0, 0, 1, 0.5, 0, 0.1, 0]], atol=1e-6)
    wrapped = tf.bridge_relabel(actions, states, wrap=True)
    assert wrapped[0, 5] == pytest.approx(2 * math.pi - 6.2, abs=1e-6)


@pytest.mark.parametrize(
    ("quat_xyzw", "rpy"),
    [
        ((0, 0, 0, 1), (0, 0, 0)),
        ((0, 0, HALF, HALF), (0, 0, math.pi / 2)),  # 90 deg about z
        ((HALF, 0, 0, HALF), (math.pi / 2, 0, 0)),  # 90 deg about x
        ((0, 0.38268343, 0, 0.92387953), (0, math.pi / 4, 0)),  # 45 deg about y
        ((0, HALF, 0, HALF), (0, math.pi / 2, 0)),  # 90 deg about y: gimbal lock, roll folded into yaw
        ((0, 0, 1, 0), (0, 0, math.pi)),  # 180 deg about z
    ],
)
def test_quat_to_euler(quat_xyzw, rpy):
    out = tf.quat_to_euler(np.array([quat_xyzw], np.float32))
    np.testing.assert_allclose(np.abs(out[0]) if rpy[2] == math.pi else out[0], rpy, atol=1e-5)


def test_quat_euler_composition_order():
    # roll 90 deg then yaw 90 deg (R = Rz Ry Rx): q = qz * qx = (0.5, 0.5, 0.5, 0.5)
    np.testing.assert_allclose(
        tf.quat_to_euler(np.array([[0.5, 0.5, 0.5, 0.5]])), [[math.pi / 2, 0, math.pi / 2]], atol=1e-6
    )
    np.testing.assert_allclose(
        tf.euler_to_quat(np.array([[math.pi / 2, 0, math.pi / 2]])), [[0.5, 0.5, 0.5, 0.5]], atol=1e-6
    )


def test_axis_angle_to_euler():
    np.testing.assert_allclose(
        tf.axis_angle_to_euler(np.array([[0, 0, 0.5], [0.3, 0, 0], [0, 0, 0]])),
        [[0, 0, 0.5], [0.3, 0, 0], [0, 0, 0]],
        atol=1e-6,
    )


def test_zero_pad_rot():
    np.testing.assert_array_equal(tf.zero_pad_rot(np.array([[1, 2, 3]])), [[1, 2, 3, 0, 0, 0]])


def test_code_points():
    row = np.zeros(12, np.int32)
    row[:5] = [112, 252, 115, 104, 0]  # "püsh", NUL
    row[5] = 120  # after the NUL: ignored
    assert list(tf.decode_code_points(np.stack([row, np.zeros(12, np.int32)]))) == ["püsh", ""]
    np.testing.assert_array_equal(tf.encode_code_points("ab", 4), [97, 98, 0, 0])
    with pytest.raises(ValueError, match="at most 4"):
        tf.encode_code_points("abcde", 4)


def test_zlib_float32():
    blob = zlib.compress(np.array([1.5, -2.0], "<f4").tobytes())
    np.testing.assert_array_equal(
        tf.zlib_to_float32(np.array([blob, blob], object), 2), [[1.5, -2.0], [1.5, -2.0]]
    )
    back = tf.float32_to_zlib(np.array([[1.5, -2.0]], np.float32))
    assert zlib.decompress(back[0]) == np.array([1.5, -2.0], "<f4").tobytes()


def test_decode_text_keeps_case():
    assert list(tf.decode_text(np.array([b"Pick Up", "x", "Würfel".encode()], object))) == [
        "Pick Up",
        "x",
        "Würfel",
    ]


def test_hash_coin_deterministic_and_balanced():
    flips = [tf.hash_coin("droid", f"ep{i}") for i in range(400)]
    assert flips == [tf.hash_coin("droid", f"ep{i}") for i in range(400)]
    assert 140 < sum(flips) < 260


def test_idle_frame_mask():
    """Input: actions already normalized with the dataset's statistics; idle = every movement dim
    within 1e-5 of 2 * (0 - q01) / (q99 - q01 + 1e-8) - 1 of the given percentiles (float32)."""
    q01, q99 = np.array([-1.0, -0.5]), np.array([1.0, 1.5])
    # normalized zero: dim 0: 2 * 1 / (2 + 1e-8) - 1 = 0 (float32); dim 1: 2 * 0.5 / 2 - 1 = -0.5
    action = np.array([[0, -0.5, 1], [0, -0.5 + 1e-6, 0], [0.1, -0.5, 0], [0, 0, 0], [0, -0.5 + 2e-5, 0]])
    np.testing.assert_array_equal(tf.idle_frame_mask(action, q01, q99), [False, False, True, True, True])
