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
