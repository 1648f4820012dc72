"""The stream's episode cache: this rank's episodes of one epoch, read ahead within a byte budget.

Episodes are keyed by (dataset, pass, episode): an episode drawn again in a later pass of the same
epoch (wrap-around) is read again instead of staying pinned in memory between passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future

import numpy as np

from pipeline.data.stream.source import Episode

__all__ = ["EpisodeCache", "make_keys", "split_key"]


def make_keys(ds: np.ndarray, passes: np.ndarray, ep: np.ndarray) -> np.ndarray:
    """int64 cache keys of (dataset index, pass index, dataset-local episode index) triples."""
    return (((ds.astype(np.int64) << 16) | passes.astype(np.int64)) << 32) | ep.astype(np.int64)


def split_key(key):
    """(dataset index, dataset-local episode index) of a key (or of an int64 array of keys)."""
    return key >> 48, key & 0xFFFFFFFF


class EpisodeCache:
    """Reads this rank's episodes of one epoch in first-use order, within ``budget`` bytes.

    An episode is submitted to ``executor`` when its estimated bytes fit the budget or when the
    batch being built needs it. Only the frames this rank uses are kept (other images are dropped
    right after the read) and counted; each use frees that frame's bytes, and the episode is
    dropped after its last use. Per-rank memory therefore shrinks ~1/world_size at a fixed window.

    Args:
        keys, frames: per sample of this rank's epoch, its episode key and frame index.
        frame_bytes: ``frame_bytes(unique keys)`` -> estimated cache bytes of one frame of each.
        read: ``read(key)`` -> the episode, or None when it is unreadable (counted by the caller).
        stats: the stream's counters; ``peak_cache_bytes`` is kept up to date.
    """

    def __init__(self, keys: np.ndarray, frames: np.ndarray, *, budget: int, cameras: Sequence[str],
                 frame_bytes: Callable[[np.ndarray], np.ndarray], read: Callable[[int], Episode | None],
                 executor: Executor, stats: dict) -> None:
        self._budget, self._cameras, self._read, self._executor, self._stats = budget, cameras, read, executor, stats
        uniq, first, inverse, uses = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        order = np.argsort(first, kind="stable")
        rank_of = np.empty(len(uniq), dtype=np.int64)
        rank_of[order] = np.arange(len(uniq))
        self.sample_slot = rank_of[inverse.reshape(-1)]  # [samples] -> slot in first-use order
        self.keys, self._first = uniq[order], first[order]
        self._uses = uses[order]
        by_slot = np.argsort(self.sample_slot, kind="stable")
        self._slot_frames = frames[by_slot]  # frames this rank uses, grouped by slot
        self._slot_start = np.concatenate([[0], np.cumsum(self._uses)[:-1]]).astype(np.int64)
        self._frame_bytes = frame_bytes(self.keys)
        self._left = self._uses.copy()
        self._next = 0
        self._live = 0
        self._futures: dict[int, Future] = {}

    def pump(self, need_upto: int) -> None:
        """Submit reads in first-use order while they fit the budget, and always up to sample ``need_upto``."""
        while self._next < len(self.keys):
            i = self._next
            est = int(self._frame_bytes[i] * self._uses[i])
            if self._first[i] >= need_upto and self._live + est > self._budget:
                break
            used = self._slot_frames[self._slot_start[i]:self._slot_start[i] + self._uses[i]]
            self._futures[i] = self._executor.submit(self._load, int(self.keys[i]), used)
            self._live += est
            self._next += 1
        self._stats["peak_cache_bytes"] = max(self._stats["peak_cache_bytes"], self._live)

    def _load(self, key: int, used: np.ndarray) -> Episode | None:
        """Read one episode and keep only the images of the frames this rank uses."""
        episode = self._read(key)
        if episode is not None:
            keep = np.zeros(len(episode.instruction), dtype=bool)
            keep[used] = True
            for imgs in episode.images.values():
                for t in np.flatnonzero(~keep[: len(imgs)]).tolist():
                    imgs[t] = b""
        return episode

    def take(self, slot: int, frame: int) -> tuple[Episode | None, tuple[bytes, ...]]:
        """The episode of ``slot`` and frame ``frame``'s images (then freed from the cache)."""
        episode = self._futures[slot].result()
        images: tuple[bytes, ...] = ()
        if episode is not None:
            images = tuple(episode.images[c][frame] for c in self._cameras)
            for c in self._cameras:
                episode.images[c][frame] = b""
        self._live -= int(self._frame_bytes[slot])
        self._left[slot] -= 1
        if self._left[slot] == 0:
            self._futures.pop(slot)
        return episode, images
