"""BOUNDS_Q99 normalization and OpenVLA dataset_statistics parsing, with literal values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.stream.normalize import NormStats, normalize_bounds_q99, parse_dataset_norm


def _stats(**kw) -> NormStats:
    base = dict(q01=[-0.1, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0], q99=[0.1, 0.4, 2.0, 1.0, 1.0, 1.0, 1.0],
                min=[-0.2, -1.0, -3.0, 0.5, 0.0, 0.0, 0.0], max=[0.2, 1.0, 3.0, 0.5, 1.0, 1.0, 1.0],
                mask=[True] * 6 + [False])
    base.update(kw)
    return NormStats(**{k: np.asarray(v, bool if k == "mask" else np.float64) for k, v in base.items()})


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
    np.testing.assert_allclose(normalize_bounds_q99([0.25, 3.0], norm.proprio), [-0.5, 1.0])
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="other"):
        parse_dataset_norm({"toy": entry, "x": entry}, "other")


def _edge_stats(q01: float, q99: float) -> NormStats:
    return NormStats(q01=np.array([q01]), q99=np.array([q99]), min=np.array([q01 - 1]), max=np.array([q99 + 1]),
                     mask=np.array([True]))


@pytest.mark.parametrize("q01,q99,at_q99,token", [
    # 2 * 0.5 = 1.0 (float32); 0.5 + 1e-8 = 0.5 in float32 -> 1.0 / 0.5 - 1 = 1.0 -> bin 256 -> 31744
    # (float64 arithmetic gave 1 - 4e-8 -> 0.99999994 in float32 -> bin 255 -> 31745)
    (-0.25, 0.25, 1.0, 31744),
    # 0.65 + 1e-8 is 1 ulp above 0.65 in float32: OpenVLA itself gives 0.99999976 -> 31745
    (-0.3, 0.35, 0.99999976, 31745),
])
def test_bin_edges_follow_openvla_float32_order(q01, q99, at_q99, token):
    from pipeline.model.tokenizer import ActionTokenizer

    stats = _edge_stats(q01, q99)
    x = np.array([[q99], [q01], [q99 + 1.0], [q01 - 1.0]], np.float32)
    y = normalize_bounds_q99(x, stats)
    assert y.dtype == np.float32
    assert y[0, 0] == np.float32(at_q99) and y[1, 0] == -1.0 and y[2, 0] == 1.0 and y[3, 0] == -1.0
    # the same value written out by hand in float32, in OpenVLA's order
    by_hand = np.float32(2) * (np.float32(q99) - np.float32(q01)) / np.float32(q99 - q01 + 1e-8) - np.float32(1)
    assert y[0, 0] == by_hand
    tok = ActionTokenizer()
    ids = tok.encode(y)
    assert ids[:, 0].tolist() == [token, 31999, 31744, 31999]
    # OpenVLA's tokenizer: vocab_size - np.digitize(clip(x, -1, 1), np.linspace(-1, 1, 256))
    assert ids[:, 0].tolist() == (32000 - np.digitize(np.clip(y[:, 0], -1, 1), np.linspace(-1, 1, 256))).tolist()


def test_bit_identical_to_openvla_tf_data_graph():
    """OpenVLA's BOUNDS_Q99 map (statistics as float64 numpy arrays, frames float32), run the way its
    loader runs it: inside a tf.data map. (A plain tf.function differs: Grappler turns the division by
    the constant denominator into a multiplication by its reciprocal; tf.data map functions keep it.)"""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    mask = np.array([True] * 6 + [False])
    for _ in range(20):
        low, high = np.full(7, -rng.uniform(0.001, 2)), np.full(7, rng.uniform(0.001, 2))
        x = np.concatenate([rng.uniform(low * 1.2, high * 1.2, (40, 7)), [high, low]]).astype(np.float32)

        def openvla(t, low=low, high=high):
            return tf.where(mask, tf.clip_by_value(2 * (t - low) / (high - low + 1e-8) - 1, -1, 1), t)

        theirs = next(iter(tf.data.Dataset.from_tensors(x).map(openvla, num_parallel_calls=2))).numpy()
        ours = normalize_bounds_q99(x, NormStats(q01=low, q99=high, min=low - 1, max=high + 1, mask=mask))
        np.testing.assert_array_equal(ours, theirs)
