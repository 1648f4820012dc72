"""Epoch plan: which (dataset, episode, frame) each global sample position holds, and rank sharding.

EPOCH DEFINITION (pure function of the data layout, mixture, seed and epoch number)

- draws: dataset ``i`` gets ``c_i`` of the epoch's ``E = sum_i N_i`` draws, as
  :func:`pipeline.data.mixture.shares.epoch_draws` computes them (``N_i`` = its frames in the stream's
  record index; shares from the mixture weights and, when balanced by size, the ``num_transitions``
  of the statistics; largest-remainder rounding).
- per-dataset walk: a "pass" is a seeded permutation of ALL ``N_i`` frames of the dataset; the
  ``c_i`` draws walk pass 0, then pass 1 (a fresh permutation), ... and stop after ``c_i`` draws
  (so ``c_i < N_i`` truncates, ``c_i > N_i`` wraps around). When every ``c_i == N_i`` (e.g. one
  dataset) every frame is drawn exactly once per epoch.
- a pass is a *windowed* permutation so that it can be read with bounded memory: the shard order is
  shuffled, the episodes of the shards are concatenated in that order (file order inside a shard:
  reads stay sequential) giving each episode a sequence number ``j``, and every frame of episode
  ``j`` gets the sort key ``j + W * u`` with ``u ~ U[0, 1)``; the pass is the frames sorted by key.
  Frames of episode ``j`` therefore all fall in the key range ``[j, j + W)``: at any point of the
  pass about ``W`` episodes are "live" (the reader keeps only those), and any two frames of the live
  episodes are uniformly mixed. ``W -> infinity`` gives a uniform permutation.
- interleave: the ``E`` positions get dataset labels by a seeded permutation of ``c_i`` copies of
  each label ``i``; the k-th position labelled ``i`` holds dataset ``i``'s k-th draw.

RANK SHARDING: all ranks consume in lockstep. The global batch is ``G = world_size * batch_size``
positions; global batch ``s`` starting at position ``p`` gives rank ``r`` the positions
``[p + r*B, p + (r+1)*B)``. The position in an epoch is the global number of consumed samples, so a
different world size (or batch size) resumes from the same position, and every position goes to
exactly one rank. When fewer than ``G`` positions remain, the epoch ends and those ``E mod G``
(fewer than one global batch) tail positions are dropped for that epoch (counted by the stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DatasetLayout",
    "EpochPlan",
    "pass_order",
    "dataset_draws",
    "interleave_labels",
    "build_epoch_plan",
    "rank_positions",
]

_TAG_PASS = 1
_TAG_INTERLEAVE = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetLayout:
    """Where a dataset's frames live: ``frames[s][k]`` = frames of episode ``k`` of shard ``s``."""

    name: str
    shard_urls: tuple[str, ...]
    frames: tuple[np.ndarray, ...]  # int64 [episodes in shard], one per shard
    episode_shard: np.ndarray = field(init=False)  # int32 [episodes] (dataset-local episode index)
    episode_record: np.ndarray = field(init=False)  # int32 [episodes] record index inside its shard
    episode_frames: np.ndarray = field(init=False)  # int64 [episodes]

    def __post_init__(self) -> None:
        if len(self.shard_urls) != len(self.frames):
            raise ValueError(f"{self.name}: {len(self.shard_urls)} shard urls but {len(self.frames)} frame lists")
        counts = [len(f) for f in self.frames]
        shard = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        record = np.concatenate([np.arange(c, dtype=np.int32) for c in counts]) if counts else np.zeros(0, np.int32)
        frames = np.concatenate([np.asarray(f, dtype=np.int64) for f in self.frames]) if counts else np.zeros(0, np.int64)
        object.__setattr__(self, "episode_shard", shard)
        object.__setattr__(self, "episode_record", record)
        object.__setattr__(self, "episode_frames", frames)

    @property
    def num_episodes(self) -> int:
        return int(self.episode_frames.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.episode_frames.sum())


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochPlan:
    """The global order of one epoch: position ``g`` holds frame ``frame[g]`` of episode ``episode[g]``
    (dataset-local index) of dataset ``dataset[g]``."""

    epoch: int
    dataset: np.ndarray  # int32 [E]
    episode: np.ndarray  # int64 [E]
    frame: np.ndarray  # int32 [E]
    pass_index: np.ndarray  # int32 [E] which pass over the dataset the draw belongs to

    def __len__(self) -> int:
        return int(self.dataset.shape[0])


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, *[int(p) for p in parts]])


def pass_order(layout: DatasetLayout, rng: np.random.Generator, window: int) -> tuple[np.ndarray, np.ndarray]:
    """One windowed permutation of all frames: (episode index int64 [N], frame index int32 [N])."""
    shard_perm = rng.permutation(len(layout.shard_urls))
    # episode sequence: shards in shuffled order, file order inside each shard
    starts = np.concatenate([[0], np.cumsum([len(f) for f in layout.frames])])
    seq = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shard_perm]) if len(shard_perm) else []
    seq = np.asarray(seq, dtype=np.int64)
    lengths = layout.episode_frames[seq]
    ep = np.repeat(seq, lengths)
    seq_pos = np.repeat(np.arange(len(seq), dtype=np.float64), lengths)
    ends = np.cumsum(lengths)
    frame = (np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - lengths, lengths)).astype(np.int32)
    keys = seq_pos + float(window) * rng.random(len(ep))
    order = np.argsort(keys, kind="stable")
    return ep[order], frame[order]


def dataset_draws(layout: DatasetLayout, count: int, *, seed: int, epoch: int, dataset_index: int,
                  window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``count`` draws of one dataset in ``epoch``: passes concatenated then truncated.

    Returns (episode int64 [count], frame int32 [count], pass index int32 [count]).
    """
    if count == 0 or layout.num_frames == 0:
        if count:
            raise ValueError(f"dataset {layout.name} has no frames but is sampled {count} times")
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32)
    eps, frames, passes, got, p = [], [], [], 0, 0
    while got < count:
        e, f = pass_order(layout, _rng(seed, _TAG_PASS, epoch, dataset_index, p), window)
        eps.append(e)
        frames.append(f)
        passes.append(np.full(len(e), p, dtype=np.int32))
        got += len(e)
        p += 1
    return np.concatenate(eps)[:count], np.concatenate(frames)[:count], np.concatenate(passes)[:count]


def interleave_labels(counts: np.ndarray, *, seed: int, epoch: int) -> np.ndarray:
    """A seeded permutation of ``counts[i]`` copies of each label ``i`` (int32 [sum(counts)])."""
    labels = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    return labels[_rng(seed, _TAG_INTERLEAVE, epoch).permutation(len(labels))]


def build_epoch_plan(layouts: Sequence[DatasetLayout], counts: np.ndarray, *, seed: int, epoch: int,
                     windows: Sequence[int]) -> EpochPlan:
    """The full global order of ``epoch`` (see the module docstring)."""
    labels = interleave_labels(counts, seed=seed, epoch=epoch)
    episode = np.zeros(len(labels), dtype=np.int64)
    frame = np.zeros(len(labels), dtype=np.int32)
    pass_index = np.zeros(len(labels), dtype=np.int32)
    for i, layout in enumerate(layouts):
        where = np.flatnonzero(labels == i)
        e, f, p = dataset_draws(layout, int(counts[i]), seed=seed, epoch=epoch, dataset_index=i,
                                window=windows[i])
        episode[where] = e
        frame[where] = f
        pass_index[where] = p
    return EpochPlan(epoch=epoch, dataset=labels, episode=episode, frame=frame, pass_index=pass_index)


def rank_positions(position: int, steps: int, *, world_size: int, rank: int, batch_size: int) -> np.ndarray:
    """Global positions of ``rank``'s samples in the ``steps`` global batches starting at ``position``:
    int64 [steps, batch_size]; global batch ``k`` gives rank ``r`` the positions
    ``[p_k + r*B, p_k + (r+1)*B)`` with ``p_k = position + k * world_size * B``."""
    starts = position + world_size * batch_size * np.arange(steps, dtype=np.int64)
    return starts[:, None] + rank * batch_size + np.arange(batch_size, dtype=np.int64)
