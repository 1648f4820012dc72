"""Shares and per-epoch draws of a mixture (the stream's and the report's one formula), with literal values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.mixture.files import Mixture, parse_mixture
from pipeline.data.mixture.shares import compute_shares, epoch_draws, largest_remainder


def _draws(weights: list[float], sizes: list[int], balance_by_size: bool) -> np.ndarray:
    mixture = Mixture(name="t", datasets=dict(zip("ab", weights)), balance_by_size=balance_by_size)
    return epoch_draws(mixture, dict(zip("ab", sizes))).counts


def test_largest_remainder_literal():
    assert largest_remainder(np.array([0.5, 0.3, 0.2]), 7).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4 -> +1 to the .5
    assert largest_remainder(np.array([1 / 3, 1 / 3, 1 / 3]), 10).tolist() == [4, 3, 3]  # tie -> lower index
    assert largest_remainder(np.array([0.25, 0.75]), 48).tolist() == [12, 36]


def test_shares_balanced_and_not():
    np.testing.assert_allclose(compute_shares([1.0, 1.0], [30, 18], True), [30 / 48, 18 / 48])
    np.testing.assert_allclose(compute_shares([1.0, 0.5], [30, 18], True), [30 / 39, 9 / 39])
    np.testing.assert_allclose(compute_shares([1.0, 1.0], [30, 18], False), [0.5, 0.5])
    assert _draws([1.0, 1.0], [30, 18], True).tolist() == [30, 18]
    assert _draws([1.0, 1.0], [30, 18], False).tolist() == [24, 24]
    with pytest.raises(ValueError):
        compute_shares([0.0, 0.0], [1, 1], True)


def test_shares_and_epoch():
    mixture = parse_mixture("datasets: {bridge_orig: 1.0, fractal20220817_data: 0.5, taco_play: 0}\n")
    frames = {"bridge_orig": 300, "fractal20220817_data": 600, "taco_play": 100}
    draws = epoch_draws(mixture, frames)
    assert draws.names == ("bridge_orig", "fractal20220817_data")  # weight 0: left out, as by the stream
    assert dict(zip(draws.names, draws.shares)) == pytest.approx({"bridge_orig": 0.5, "fractal20220817_data": 0.5})
    # epoch = the 900 frames of the weighted datasets (the stream never reads taco_play's)
    assert draws.epoch_length == 900 and draws.counts.tolist() == [450, 450]
    assert draws.passes_per_epoch() == pytest.approx([450 / 300, 450 / 600])
    with pytest.raises(ValueError, match="frame counts"):
        epoch_draws(mixture, {})
    flat = parse_mixture("balance_by_size: false\ndatasets: {bridge_orig: 3, taco_play: 1}\n")
    assert compute_shares([3, 1], [0, 0], False) == pytest.approx([0.75, 0.25])
    assert epoch_draws(flat, {"bridge_orig": 10, "taco_play": 30}).shares == pytest.approx([0.75, 0.25])
    # equal weights + balance_by_size: every dataset is passed exactly once per epoch
    equal = parse_mixture("datasets: {bridge_orig: 1, taco_play: 1}\n")
    draws = epoch_draws(equal, {"bridge_orig": 123, "taco_play": 7})
    assert draws.passes_per_epoch() == pytest.approx([1.0, 1.0]) and draws.counts.tolist() == [123, 7]
