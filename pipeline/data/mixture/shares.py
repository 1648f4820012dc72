"""Sampling shares and per-epoch draw counts of a mixture: the one formula the training stream samples
with and ``vla mixture show`` prints.

EPOCH DEFINITION (identical in the stream, see :mod:`pipeline.data.stream.plan` for the order):

- Only datasets with a positive weight take part. ``N_i`` = curated frames of dataset ``i``; one
  epoch is ``E = sum_i N_i`` draws (as many frames as the weighted datasets hold).
- shares: ``share_i ∝ w_i * N_i`` when the mixture balances by size (OpenVLA), else ``share_i ∝ w_i``
  (normalized to sum 1).
- draws: dataset ``i`` gets ``c_i = round(share_i * E)`` draws, rounded with the largest-remainder
  method so that ``sum_i c_i == E`` (ties go to the lower dataset index), i.e.
  ``passes_i = share_i * E / N_i`` passes over its frames per epoch. With ``balance_by_size`` and
  equal weights every ``c_i == N_i``: each frame is drawn exactly once per epoch.

(OpenVLA's nominal epoch is instead ``max over weight-1.0 datasets of N_i / share_i``; ours does not
depend on which datasets happen to have weight exactly 1.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.mixture.files import Mixture

__all__ = ["EPOCH_DEFINITION", "EpochDraws", "compute_shares", "epoch_draws", "largest_remainder"]

EPOCH_DEFINITION = ("one epoch = sum_i N_i draws (N_i = curated frames of weighted dataset i); dataset i gets "
                    "round(share_i * sum N) of them (largest remainder) = share_i * sum N / N_i passes over its frames")


def compute_shares(weights: Sequence[float], sizes: Sequence[int], balance_by_size: bool) -> np.ndarray:
    """Sampling probability per dataset (sums to 1)."""
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.any(w > 0):
        raise ValueError(f"mixture weights must be >= 0 with at least one > 0, got {list(w)}")
    if balance_by_size:
        w = w * np.asarray(sizes, dtype=np.float64)
        if not np.any(w > 0):
            raise ValueError("balance_by_size: every weighted dataset has 0 frames")
    return w / w.sum()


def largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integers ``c_i`` summing to ``total`` closest to ``shares * total`` (largest remainder)."""
    exact = np.asarray(shares, dtype=np.float64) * total
    counts = np.floor(exact + 1e-9).astype(np.int64)
    left = int(total - counts.sum())
    if left > 0:
        order = np.lexsort((np.arange(len(exact)), -(exact - counts)))
        counts[order[:left]] += 1
    return counts


@dataclass(frozen=True)
class EpochDraws:
    """One epoch of a mixture: per weighted dataset (file order) its weight, frames, share and draws."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    frames: tuple[int, ...]
    shares: np.ndarray  # float64 [datasets], sums to 1
    counts: np.ndarray  # int64 [datasets], draws per epoch, sums to epoch_length

    @property
    def epoch_length(self) -> int:
        return int(sum(self.frames))

    def passes_per_epoch(self) -> np.ndarray:
        """``share_i * E / N_i`` (0 for a dataset without frames)."""
        frames = np.asarray(self.frames, dtype=np.float64)
        return np.divide(self.shares * self.epoch_length, frames, out=np.zeros_like(frames), where=frames > 0)


def epoch_draws(mixture: Mixture, frames: Mapping[str, int]) -> EpochDraws:
    """The draws of one epoch of ``mixture`` given the curated frames of its weighted datasets.

    ValueError naming the datasets whose frame counts ``frames`` lacks.
    """
    active = mixture.active()
    missing = [n for n in active if n not in frames]
    if missing:
        raise ValueError(f"mixture {mixture.name}: the epoch needs the frame counts of {', '.join(missing)}")
    names = tuple(active)
    weights = tuple(float(active[n]) for n in names)
    sizes = tuple(int(frames[n]) for n in names)
    shares = compute_shares(weights, sizes, bool(mixture.balance_by_size))
    return EpochDraws(names=names, weights=weights, frames=sizes, shares=shares,
                      counts=largest_remainder(shares, int(sum(sizes))))
