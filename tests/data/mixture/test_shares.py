"""Shares and per-epoch draws of a mixture (the stream's and the report's one formula), with literal values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.mixture.files import Mixture, parse_mixture
from pipeline.data.mixture.shares import compute_shares, epoch_draws, largest_remainder


def _draws(weights: list[float], sizes: list[int], balance_by_size: bool) -> np.ndarray:
    """Draws of datasets "a", "b" whose statistics count exactly their training frames."""
    mixture = Mixture(name="t", datasets=dict(zip("ab", weights)), balance_by_size=balance_by_size)
    return epoch_draws(mixture, dict(zip("ab", sizes)), dict(zip("ab", sizes))).counts


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
    with pytest.raises(ValueError, match="num_transitions 0"):
        compute_shares([1.0, 1.0], [0, 0], True)


def test_shares_weight_num_transitions_epoch_counts_training_frames():
    """OpenVLA's make_interleaved_dataset: share_i ∝ w_i x num_transitions_i (statistics over split all);
    the epoch is the training frames. By hand:
    a: w 1, T 100, N 60; b: w 1, T 50, N 45; c: w 2, T 25, N 15
    w x T = 100 : 50 : 50 -> shares 1/2, 1/4, 1/4; E = 60 + 45 + 15 = 120 -> draws 60, 30, 30 exactly,
    passes 60/60, 30/45, 30/15. (By training frames it would be 60 : 45 : 30 -> 53.3, 40, 26.7.)"""
    mixture = parse_mixture("datasets: {bridge_orig: 1, fractal20220817_data: 1, taco_play: 2}\n")
    names = ("bridge_orig", "fractal20220817_data", "taco_play")
    frames, transitions = dict(zip(names, (60, 45, 15))), dict(zip(names, (100, 50, 25)))
    draws = epoch_draws(mixture, frames, transitions)
    assert draws.names == names and draws.transitions == (100, 50, 25) and draws.frames == (60, 45, 15)
    assert draws.shares.tolist() == [0.5, 0.25, 0.25]
    assert draws.epoch_length == 120 and draws.counts.tolist() == [60, 30, 30]
    assert draws.passes_per_epoch() == pytest.approx([1.0, 30 / 45, 2.0])
    by_frames = epoch_draws(mixture, frames, frames)  # what weighting by training frames would draw
    assert by_frames.counts.tolist() == [53, 40, 27]


def test_largest_remainder_of_num_transitions_shares():
    """a: w 1, T 7, N 5; b: w 1, T 11, N 10; c: w 0.5, T 8, N 6.
    balanced: w x T = 7 : 11 : 4 of 22; E = 21 -> exact 6.682, 10.5, 3.818 -> floors 6, 10, 3 (19);
    the 2 left go to the largest remainders c (.818) then a (.682) -> 7, 10, 4.
    not balanced: 1 : 1 : 0.5 -> 8.4, 8.4, 4.2 -> floors 8, 8, 4; the 1 left: tie a/b -> a -> 9, 8, 4."""
    names = ("bridge_orig", "fractal20220817_data", "taco_play")
    frames, transitions = dict(zip(names, (5, 10, 6))), dict(zip(names, (7, 11, 8)))
    text = "datasets: {bridge_orig: 1, fractal20220817_data: 1, taco_play: 0.5}\n"
    balanced = epoch_draws(parse_mixture(text), frames, transitions)
    assert balanced.shares == pytest.approx([7 / 22, 11 / 22, 4 / 22]) and balanced.counts.tolist() == [7, 10, 4]
    flat = epoch_draws(parse_mixture("balance_by_size: false\n" + text), frames, {})  # statistics not needed
    assert flat.shares == pytest.approx([0.4, 0.4, 0.2]) and flat.counts.tolist() == [9, 8, 4]
    assert flat.transitions == (0, 0, 0)  # unused: not part of what the draws depend on


def test_shares_and_epoch():
    mixture = parse_mixture("datasets: {bridge_orig: 1.0, fractal20220817_data: 0.5, taco_play: 0}\n")
    frames = {"bridge_orig": 300, "fractal20220817_data": 600, "taco_play": 100}
    draws = epoch_draws(mixture, frames, frames)
    assert draws.names == ("bridge_orig", "fractal20220817_data")  # weight 0: left out, as by the stream
    assert dict(zip(draws.names, draws.shares)) == pytest.approx({"bridge_orig": 0.5, "fractal20220817_data": 0.5})
    # epoch = the 900 frames of the weighted datasets (the stream never reads taco_play's)
    assert draws.epoch_length == 900 and draws.counts.tolist() == [450, 450]
    assert draws.passes_per_epoch() == pytest.approx([450 / 300, 450 / 600])
    with pytest.raises(ValueError, match="frame and num_transitions counts of bridge_orig, fractal"):
        epoch_draws(mixture, {}, {})
    with pytest.raises(ValueError, match="counts of fractal20220817_data$"):
        epoch_draws(mixture, frames, {"bridge_orig": 300})
    flat = parse_mixture("balance_by_size: false\ndatasets: {bridge_orig: 3, taco_play: 1}\n")
    assert compute_shares([3, 1], [0, 0], False) == pytest.approx([0.75, 0.25])
    assert epoch_draws(flat, {"bridge_orig": 10, "taco_play": 30}, {}).shares == pytest.approx([0.75, 0.25])
    # equal weights + balance_by_size + statistics counting exactly the training frames: one pass each
    equal = parse_mixture("datasets: {bridge_orig: 1, taco_play: 1}\n")
    sizes = {"bridge_orig": 123, "taco_play": 7}
    draws = epoch_draws(equal, sizes, sizes)
    assert draws.passes_per_epoch() == pytest.approx([1.0, 1.0]) and draws.counts.tolist() == [123, 7]
