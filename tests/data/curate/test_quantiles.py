"""Exact mergeable quantiles: bit-identical to numpy's linear rule (OpenVLA's numpy 1.26 included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.curate.quantiles import (
    QUANTILES,
    Bracket,
    BracketCounts,
    BracketMiss,
    bracket_from_sketch,
    numpy_lerp,
    quantile_positions,
)
from pipeline.data.curate.stats import QuantileSketch

ASSET = Path(__file__).parents[2] / "assets" / "quantiles_numpy126.json"


def uniform(n: int, d: int, seed: int) -> np.ndarray:
    """float64 [n, d] in [0, 1) from a splitmix64 hash of the index: integer and IEEE arithmetic only,
    so every numpy version produces the same bits (the asset was written with numpy 1.26.4)."""
    i = np.arange(n * d, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        z = i * np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return ((z >> np.uint64(11)).astype(np.float64) / 2.0**53).reshape(n, d)


def adversarial(n: int, seed: int) -> np.ndarray:
    """float32 [n, 8]: uniform, heavy tails, ties, constant, binary, mixed sign/magnitude, tiny, wide."""
    u = uniform(n, 8, seed)
    cols = [u[:, 0] * 2 - 1,
            1.0 / (u[:, 1] - 0.5 + 1e-9) * 1e-3,
            np.floor(u[:, 2] * 5) / 4,
            np.full(n, 0.37),
            (u[:, 4] < 0.5).astype(np.float64),
            np.where(u[:, 5] < 0.02, -1e3 * u[:, 6], 1e-4 * u[:, 6]),
            (u[:, 6] - 0.5) * 1e-6,
            np.where(u[:, 7] < 0.5, u[:, 7] * 1e-7, u[:, 7] * 1e7)]
    return np.stack(cols, 1).astype(np.float32)


def exact_quantiles(x: np.ndarray, qs=QUANTILES) -> np.ndarray:
    """float64 [Q, D] quantiles of the float32 rows ``x`` [n, D] in one process (the same rule as the
    two passes: ``quantile_positions`` + ``numpy_lerp``)."""
    x = np.asarray(x, np.float32)
    lo, hi, gamma = quantile_positions(len(x), qs)
    parted = np.partition(x, np.unique(np.concatenate([lo, hi])), axis=0)
    return numpy_lerp(parted[lo], parted[hi], gamma)


def two_pass(x: np.ndarray, shards: int, k: int = 4096, bracket: Bracket | None = None) -> np.ndarray:
    """The curation protocol: per-shard sketches -> bracket -> per-shard counts -> exact select."""
    parts = np.array_split(x, shards)
    if bracket is None:
        sketch = QuantileSketch(x.shape[1], k)
        for part in parts:
            one = QuantileSketch(x.shape[1], k)
            for chunk in np.array_split(part, 5):
                one.update(chunk)
            sketch.merge(one)
        bracket = bracket_from_sketch(sketch)
    for _ in range(2):
        total = BracketCounts(bracket)
        for part in parts:
            mine = BracketCounts(bracket)
            mine.update(part)
            total.merge(BracketCounts.from_bytes(mine.to_bytes()))
        try:
            return total.select()
        except BracketMiss as miss:
            bracket = bracket.widened(miss.misses)
    raise AssertionError("a widened bracket still missed")


def test_positions_by_hand():
    # n = 101: v = 100 * 0.01 = 1.0 -> ranks 1 and 2, weight 0; q99: v = 99.0
    lo, hi, g = quantile_positions(101, QUANTILES)
    assert lo.tolist() == [1, 99] and hi.tolist() == [2, 100] and g.tolist() == [0.0, 0.0]
    # n = 1000: v = 999 * 0.01 = 9.99 -> ranks 9, 10, weight 0.99 (float64)
    lo, hi, g = quantile_positions(1000, QUANTILES)
    assert lo.tolist() == [9, 989] and hi.tolist() == [10, 990]
    assert g[0] == 999 * 0.01 - 9 and g[1] == 999 * 0.99 - 989


def test_hand_worked_values():
    # 0, 1, ..., 200 as float32: q01 at v = 2.0 -> 2.0 exactly; q99 at v = 198.0 -> 198.0
    x = np.arange(201, dtype=np.float32)[:, None]
    assert exact_quantiles(x).ravel().tolist() == [2.0, 198.0]
    # 11 frames 0, 10, ..., 100: v = 0.1 -> 0 + 10 * 0.1 = 1.0; v = 9.9 -> 100 - 10 * 0.1 = 99.0
    x = (np.arange(11, dtype=np.float32) * 10)[:, None]
    q = two_pass(x, shards=3)
    assert q[0, 0] == 0 + 10.0 * (10 * 0.01) and q[1, 0] == 100.0 - 10.0 * (1 - (10 * 0.99 - 9))


@pytest.mark.parametrize("case", json.loads(ASSET.read_text())["cases"], ids=lambda c: f"n{c['n']}")
def test_bit_identical_to_numpy_1_26(case):
    """OpenVLA's environment: numpy 1.26, a Python-float q, float32 frames -> a float64 result."""
    x = adversarial(case["n"], case["seed"])
    expected = np.array([[float.fromhex(v) for v in case["q01"]], [float.fromhex(v) for v in case["q99"]]])
    np.testing.assert_array_equal(exact_quantiles(x), expected)
    np.testing.assert_array_equal(two_pass(x, shards=min(3, len(x)), k=8), expected)
    np.testing.assert_array_equal(np.quantile(x, np.array(QUANTILES), axis=0), expected)  # numpy 2's equivalent


def test_one_million_frames_across_shards():
    x = adversarial(1_000_000, seed=11)
    x[:, 3] = np.float32(uniform(1_000_000, 1, 12)[:, 0] ** 2)  # a smooth skewed column instead of the constant
    expected = np.quantile(x, np.array(QUANTILES), axis=0)
    np.testing.assert_array_equal(two_pass(x, shards=8), expected)
    # the sketch alone is not exact at this size (what exactness fixes)
    sketch = QuantileSketch(8, 4096)
    sketch.update(x)
    assert not np.array_equal(sketch.quantiles(list(QUANTILES)), expected)


@pytest.mark.parametrize("n", [1, 2, 3, 150])
def test_few_frames_and_empty_shards(n):
    x = adversarial(n, seed=n)
    np.testing.assert_array_equal(two_pass(x, shards=4), np.quantile(x, np.array(QUANTILES), axis=0))


def test_a_missed_bracket_is_detected_and_widened():
    x = adversarial(5000, seed=3)
    expected = np.quantile(x, np.array(QUANTILES), axis=0)
    wrong = Bracket(np.quantile(x, 0.5, axis=0)[None].repeat(2, 0).astype(np.float32),
                    np.quantile(x, 0.6, axis=0)[None].repeat(2, 0).astype(np.float32))
    counts = BracketCounts(wrong)
    counts.update(x)
    with pytest.raises(BracketMiss) as miss:
        counts.select()
    assert {side for _, _, side in miss.value.misses} == {"low", "high"}
    np.testing.assert_array_equal(two_pass(x, shards=3, bracket=wrong), expected)
