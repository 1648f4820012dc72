"""Epoch plan: windowed permutations, wrap-around and truncation, the plan, rank sharding."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.mixture.files import Mixture
from pipeline.data.mixture.shares import epoch_draws
from pipeline.data.stream.plan import (
    DatasetLayout,
    build_epoch_plan,
    dataset_draws,
    pass_order,
    rank_positions,
)


def _layout(name: str, shards: list[list[int]]) -> DatasetLayout:
    return DatasetLayout(name=name, shard_urls=tuple(f"{name}-{i}" for i in range(len(shards))),
                         frames=tuple(np.asarray(s) for s in shards))


A = _layout("a", [[5, 6, 7], [8, 4]])  # 30 frames, 5 episodes
B = _layout("b", [[6, 6], [6]])  # 18 frames, 3 episodes


def _draws(weights: list[float], sizes: list[int], balance_by_size: bool) -> np.ndarray:
    """The stream's per-epoch draws of datasets "a", "b" (mixture.shares.epoch_draws) when their
    statistics count exactly their training frames (num_transitions == frames)."""
    mixture = Mixture(name="t", datasets=dict(zip("ab", weights)), balance_by_size=balance_by_size)
    return epoch_draws(mixture, dict(zip("ab", sizes)), dict(zip("ab", sizes))).counts


def _frames(layout: DatasetLayout) -> set[tuple[int, int]]:
    return {(e, f) for e, n in enumerate(layout.episode_frames) for f in range(int(n))}


@pytest.mark.parametrize("window", [1, 2, 1000])
def test_pass_is_a_permutation(window):
    ep, fr = pass_order(A, np.random.default_rng(0), window)
    assert sorted(zip(ep.tolist(), fr.tolist())) == sorted(_frames(A))


def test_window_one_keeps_episodes_contiguous():
    ep, _ = pass_order(A, np.random.default_rng(1), 1)
    blocks = [int(e) for i, e in enumerate(ep) if i == 0 or e != ep[i - 1]]
    assert len(blocks) == A.num_episodes  # each episode is one contiguous block
    # shards stay whole in the episode sequence (file order inside a shard)
    shard_seq = [int(A.episode_shard[e]) for e in blocks]
    assert shard_seq in ([0, 0, 0, 1, 1], [1, 1, 0, 0, 0])


def test_window_bounds_live_episodes():
    layout = _layout("c", [[10] * 40])
    ep, _ = pass_order(layout, np.random.default_rng(2), 4)
    # frames of episode j have keys in [j, j+4): a frame of episode j never precedes one of episode j-4 or older
    # after that episode's key range ended -> at any point at most ~5 episodes are started and unfinished
    first = {int(e): i for i, e in reversed(list(enumerate(ep)))}
    last = {int(e): i for i, e in enumerate(ep)}
    live = max(sum(1 for e in first if first[e] <= t <= last[e]) for t in range(len(ep)))
    assert live <= 6


def test_wraparound_and_truncation():
    ep, fr, passes = dataset_draws(B, 45, seed=0, epoch=0, dataset_index=1, window=2)
    counts = {}
    for key in zip(ep.tolist(), fr.tolist()):
        counts[key] = counts.get(key, 0) + 1
    assert set(counts.values()) <= {2, 3} and sum(counts.values()) == 45
    assert passes.tolist() == [0] * 18 + [1] * 18 + [2] * 9
    ep, fr, _ = dataset_draws(A, 10, seed=0, epoch=0, dataset_index=0, window=2)
    assert len(set(zip(ep.tolist(), fr.tolist()))) == 10


def test_plan_each_frame_once_when_balanced():
    counts = _draws([1.0, 1.0], [A.num_frames, B.num_frames], True)
    plan = build_epoch_plan([A, B], counts, seed=3, epoch=0, windows=[2, 2])
    got = sorted(zip(plan.dataset.tolist(), plan.episode.tolist(), plan.frame.tolist()))
    want = sorted([(0, e, f) for e, f in _frames(A)] + [(1, e, f) for e, f in _frames(B)])
    assert got == want
    again = build_epoch_plan([A, B], counts, seed=3, epoch=0, windows=[2, 2])
    np.testing.assert_array_equal(plan.episode, again.episode)
    other = build_epoch_plan([A, B], counts, seed=3, epoch=1, windows=[2, 2])
    assert not np.array_equal(plan.episode, other.episode)


def test_plan_weighted_counts():
    counts = _draws([1.0, 2.0], [A.num_frames, B.num_frames], True)  # 30 : 36 of 48
    plan = build_epoch_plan([A, B], counts, seed=0, epoch=0, windows=[3, 3])
    assert np.bincount(plan.dataset).tolist() == counts.tolist() == [22, 26]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_positions_disjoint_and_cover(world):
    batch, total = 2, 48
    seen = []
    for position in range(0, total - world * batch + 1, world * batch):
        for rank in range(world):
            seen += rank_positions(position, 1, world_size=world, rank=rank, batch_size=batch).ravel().tolist()
    assert sorted(seen) == list(range(total))
    steps = total // (world * batch)  # the same positions for a whole epoch at once, as the stream asks
    whole = [rank_positions(0, steps, world_size=world, rank=r, batch_size=batch) for r in range(world)]
    assert sorted(np.concatenate(whole).ravel().tolist()) == list(range(total))
    assert whole[0].shape == (steps, batch)
