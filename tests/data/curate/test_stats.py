"""Mergeable statistics: exact below sketch capacity, within the stated rank error above it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.curate.stats import PartialStats, QuantileSketch, action_mask


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    action = rng.standard_normal((n, 7)).astype(np.float32) * np.linspace(0.01, 1, 7, dtype=np.float32)
    action[:, 3] = rng.exponential(size=n)  # skewed column
    action[:, 6] = rng.integers(0, 2, n)  # binary gripper
    proprio = rng.uniform(-2, 3, (n, 5)).astype(np.float32)
    return action, proprio


def _partials(action, proprio, n_tasks: int, k: int, episode_len: int = 37) -> list[PartialStats]:
    out = []
    for a_part, p_part in zip(np.array_split(action, n_tasks), np.array_split(proprio, n_tasks)):
        stats = PartialStats(k=k)
        for start in range(0, len(a_part), episode_len):
            stats.update(a_part[start:start + episode_len], p_part[start:start + episode_len])
        out.append(stats)
    return out


def _merge(parts: list[PartialStats]) -> PartialStats:
    total = PartialStats(k=parts[0].k)
    for p in parts:
        total.merge(PartialStats.from_bytes(p.to_bytes()))  # through the serialized form
    return total


@pytest.mark.parametrize("n_tasks", [1, 3])
def test_exact_below_capacity(n_tasks):
    action, proprio = _data(3000)
    stats = _merge(_partials(action, proprio, n_tasks, k=4096)).finalize()
    for key, arr in (("action", action), ("proprio", proprio)):
        s = stats[key]
        np.testing.assert_allclose(s["mean"], arr.astype(np.float64).mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s["std"], arr.astype(np.float64).std(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(s["min"], arr.min(0))
        np.testing.assert_array_equal(s["max"], arr.max(0))
        np.testing.assert_allclose(s["q01"], np.quantile(arr, 0.01, axis=0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(s["q99"], np.quantile(arr, 0.99, axis=0), rtol=0, atol=1e-6)
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert stats["num_transitions"] == 3000
    assert stats["num_trajectories"] == sum(len(range(0, len(a), 37)) for a in np.array_split(action, n_tasks))


@pytest.mark.parametrize("k,n_tasks", [(256, 7), (1024, 4)])
def test_merged_quantiles_within_rank_error(k, n_tasks):
    action, proprio = _data(60_000, seed=1)
    total = _merge(_partials(action, proprio, n_tasks, k=k))
    bound = total.rank_error_bound()
    assert 0 < bound <= 0.05
    stats = total.finalize()
    for key, arr in (("action", action), ("proprio", proprio)):
        for q, name in ((0.01, "q01"), (0.99, "q99")):
            for d, value in enumerate(stats[key][name]):
                col = arr[:, d]
                lo, hi = (col < value).mean(), (col <= value).mean()  # true rank interval of the estimate
                assert lo - bound <= q <= hi + bound, (key, name, d, lo, hi, bound)
        np.testing.assert_allclose(stats[key]["mean"], arr.astype(np.float64).mean(0), rtol=1e-9, atol=1e-12)


def test_sketch_is_deterministic_and_bounded_in_size():
    x = np.random.default_rng(2).standard_normal((50_000, 3)).astype(np.float32)
    a, b = QuantileSketch(3, k=128), QuantileSketch(3, k=128)
    for chunk in np.array_split(x, 100):
        a.update(chunk)
        b.update(chunk)
    np.testing.assert_array_equal(a.quantiles([0.01, 0.99]), b.quantiles([0.01, 0.99]))
    assert sum(len(lv) for lv in a.levels) <= 128 * len(a.levels)
    with pytest.raises(ValueError, match="k must be"):
        QuantileSketch(3, k=7)


def test_empty_and_width_mismatch():
    empty = PartialStats().finalize()
    assert empty["num_transitions"] == 0 and len(empty["proprio"]["mean"]) == 7
    stats = PartialStats()
    stats.update(np.zeros((2, 7), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="proprio width"):
        stats.update(np.zeros((2, 7), np.float32), np.zeros((2, 4), np.float32))
    assert action_mask() == [True] * 6 + [False]
