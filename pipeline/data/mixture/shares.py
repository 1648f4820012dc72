"""Sampling shares and per-epoch draw counts of a mixture: the one formula the training stream samples
with and ``vla mixture show`` prints.

EPOCH DEFINITION (identical in the stream, see :mod:`pipeline.data.stream.plan` for the order):

- Only datasets with a positive weight take part. For dataset ``i``: ``w_i`` its weight, ``T_i`` the
  ``num_transitions`` of its ``dataset_statistics.json`` (frames of split ``all``: every source
  split, unlabeled and later-filtered episodes included; OpenVLA's dataset size) and ``N_i`` its
  curated training frames (what the stream can draw).
- shares (OpenVLA's ``make_interleaved_dataset``): ``share_i ∝ w_i * T_i`` when the mixture balances
  by size (its ``balance_weights``), else ``share_i ∝ w_i``; normalized to sum 1.
- epoch: ``E = sum_i N_i`` draws (as many as the weighted datasets hold training frames). OpenVLA's
  interleave samples forever, so only the shares carry over; ``E`` only sets how often the plan is
  reshuffled and what "epoch" means in logs (its nominal epoch, ``max over weight-1.0 datasets of
  T_i / share_i``, depends on which weights happen to be exactly 1).
- draws: dataset ``i`` gets ``c_i = round(share_i * E)`` draws, rounded with the largest-remainder
  method so that ``sum_i c_i == E`` (ties go to the lower dataset index), i.e.
  ``passes_i = share_i * E / N_i`` passes over its training frames per epoch. With ``balance_by_size`` and
  equal weights a dataset is passed ``(T_i / N_i) / (sum T / sum N)`` times: more often the larger
  the part of its statistics frames that made it into training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.mixture.files import Mixture

__all__ = ["EPOCH_DEFINITION", "EpochDraws", "compute_shares", "epoch_draws", "largest_remainder"]

EPOCH_DEFINITION = ("share_i ∝ weight_i x num_transitions_i (statistics over split all, as OpenVLA) when "
                    "balance_by_size, else ∝ weight_i; one epoch = sum_i N_i draws (N_i = curated training frames "
                    "of weighted dataset i), dataset i gets round(share_i * sum N) of them (largest remainder) = "
                    "share_i * sum N / N_i passes over its frames")


def compute_shares(weights: Sequence[float], sizes: Sequence[int], balance_by_size: bool) -> np.ndarray:
    """Sampling probability per dataset (sums to 1): ``w * sizes`` (balanced) or ``w``, normalized.

    ``sizes`` are OpenVLA's dataset sizes (``num_transitions`` of the statistics); unused unless balanced.
    """
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.any(w > 0):
        raise ValueError(f"mixture weights must be >= 0 with at least one > 0, got {list(w)}")
    if balance_by_size:
        w = w * np.asarray(sizes, dtype=np.float64)
        if not np.any(w > 0):
            raise ValueError("balance_by_size: every weighted dataset has num_transitions 0")
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
    """One epoch of a mixture: per weighted dataset (file order) its weight, num_transitions (statistics),
    training frames, share and draws."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    transitions: tuple[int, ...]  # num_transitions (split all): the shares' sizes; 0 = unused (not balanced)
    frames: tuple[int, ...]  # curated training frames: the epoch length and the passes
    shares: np.ndarray  # float64 [datasets], sums to 1
    counts: np.ndarray  # int64 [datasets], draws per epoch, sums to epoch_length

    @property
    def epoch_length(self) -> int:
        return int(sum(self.frames))

    def passes_per_epoch(self) -> np.ndarray:
        """``share_i * E / N_i`` before rounding (0 for a dataset without training frames)."""
        frames = np.asarray(self.frames, dtype=np.float64)
        return np.divide(self.shares * self.epoch_length, frames, out=np.zeros_like(frames), where=frames > 0)


def epoch_draws(mixture: Mixture, frames: Mapping[str, int], transitions: Mapping[str, int]) -> EpochDraws:
    """The draws of one epoch of ``mixture``, given per weighted dataset its curated training ``frames``
    and the ``num_transitions`` of its statistics (``transitions``; only read when the mixture balances
    by size).

    ValueError naming the datasets whose counts are missing.
    """
    active = mixture.active()
    balance = bool(mixture.balance_by_size)
    missing = [n for n in active if n not in frames or (balance and n not in transitions)]
    if missing:
        raise ValueError(f"mixture {mixture.name}: the epoch needs the frame and num_transitions counts of "
                         f"{', '.join(missing)}")
    names = tuple(active)
    weights = tuple(float(active[n]) for n in names)
    sizes = tuple(int(transitions[n]) if balance else 0 for n in names)
    train = tuple(int(frames[n]) for n in names)
    shares = compute_shares(weights, sizes, balance)
    return EpochDraws(names=names, weights=weights, transitions=sizes, frames=train, shares=shares,
                      counts=largest_remainder(shares, int(sum(train))))
