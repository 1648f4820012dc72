"""Exact q01/q99 of any number of frames, mergeable across curation tasks (two passes).

OpenVLA computes ``np.quantile(actions, 0.01, axis=0)`` on the concatenated float32 frames with
numpy 1.x, whose linear rule is, per column (``n`` frames, sorted values ``x``)::

    v = (n - 1) * q            # float64 "virtual index"
    a, b = x[floor(v)], x[min(floor(v) + 1, n - 1)]    # the two neighbouring order statistics
    g = v - floor(v)           # float64
    d = b - a                  # float32 (both operands are float32)
    result = a + d * g  if g < 0.5  else  b - d * (1 - g)      # float64

(numpy 2 computes the same with an array ``q``: ``np.quantile(x, np.array([0.01, 0.99]), axis=0)``;
with a Python float ``q`` it works in float32 instead and differs in the last bits, see
ENVIRONMENT.md). Checked bit for bit against numpy 1.26.4 (tests/assets/quantiles_numpy126.json).

The two order statistics of every (quantile, column) are found without holding all frames in one
place:

1. every task builds a :class:`~pipeline.data.curate.stats.QuantileSketch`; the merged sketch gives,
   per (quantile, column), a value interval (:class:`Bracket`) that holds ranks ``floor(v)`` and
   ``floor(v) + 1`` (widened by the sketch's rank error bound);
2. every task counts its frames below the interval and returns the distinct values inside it with
   their counts (:class:`BracketCounts`, a few thousand values per column whatever the size);
3. the merged counts locate both order statistics exactly (:meth:`BracketCounts.select`). Should an
   interval miss a rank (the bound is a guarantee, but nothing depends on it), ``select`` says which
   side, the driver opens that side to +-inf and runs step 2 again.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "QUANTILES",
    "quantile_positions",
    "numpy_lerp",
    "Bracket",
    "BracketCounts",
    "BracketMiss",
    "bracket_from_sketch",
]

QUANTILES = (0.01, 0.99)


def quantile_positions(n: int, qs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, gamma)`` per quantile: the 0-based ranks of the two order statistics numpy's linear
    rule interpolates between, and the float64 weight of the upper one."""
    virtual = (int(n) - 1) * np.asarray(qs, dtype=np.float64)
    lo = np.floor(virtual)
    gamma = virtual - lo
    lo = lo.astype(np.int64)
    hi = np.minimum(lo + 1, max(int(n) - 1, 0))
    return lo, hi, gamma


def numpy_lerp(a: np.ndarray, b: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """numpy's ``_lerp`` on float32 order statistics ``a``, ``b`` [Q, D] with float64 ``gamma`` [Q]:
    the difference in float32, the rest in float64 (see the module docstring)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    diff = (b - a).astype(np.float64)  # float32 subtraction, then exact upcast
    g = np.asarray(gamma, np.float64).reshape(-1, *([1] * (a.ndim - 1)))
    low_side = a.astype(np.float64) + diff * g
    high_side = b.astype(np.float64) - diff * (1.0 - g)
    return np.where(g >= 0.5, high_side, low_side)


@dataclass
class Bracket:
    """Per (quantile, column) closed value interval ``[low, high]`` meant to hold both order statistics."""

    low: np.ndarray  # float32 [Q, D] (-inf: open)
    high: np.ndarray  # float32 [Q, D] (+inf: open)

    def widened(self, misses: list[tuple[int, int, str]]) -> Bracket:
        """The bracket with the missed sides (``(q, d, "low"|"high")``) opened to -inf / +inf."""
        low, high = self.low.copy(), self.high.copy()
        for q, d, side in misses:
            if side == "low":
                low[q, d] = -np.inf
            else:
                high[q, d] = np.inf
        return Bracket(low, high)


def bracket_from_sketch(sketch, qs=QUANTILES) -> Bracket:
    """Value intervals from a merged sketch: ranks ``lo - m`` .. ``hi + m`` with ``m`` its rank error
    bound (+2); an interval reaching past either end of the data is open on that side."""
    n = int(sketch.count)
    if n == 0:
        empty = np.zeros((len(qs), sketch.dim), np.float32)
        return Bracket(empty - np.inf, empty + np.inf)
    margin = math.ceil(sketch.rank_error_bound() * n) + 2
    lo, hi, _ = quantile_positions(n, qs)
    low_ranks, high_ranks = lo - margin, hi + margin
    ranks = np.clip(np.concatenate([low_ranks, high_ranks]), 0, n - 1)
    values = sketch.quantiles(list(ranks / max(n - 1, 1))).astype(np.float32)
    low, high = values[: len(qs)], values[len(qs):]
    low[low_ranks <= 0] = -np.inf
    high[high_ranks >= n - 1] = np.inf
    return Bracket(low, high)


class BracketMiss(Exception):
    """An interval did not hold its ranks; ``misses`` = [(q, d, "low"|"high")] to open and recount."""

    def __init__(self, misses: list[tuple[int, int, str]]) -> None:
        super().__init__(f"{len(misses)} quantile bracket(s) missed their ranks")
        self.misses = misses


@dataclass
class BracketCounts:
    """One task's (or several merged tasks') answer for a :class:`Bracket`: frames below each interval,
    and the distinct values inside it with their counts."""

    bracket: Bracket
    count: int = 0
    below: np.ndarray = None  # type: ignore[assignment]  # int64 [Q, D]
    inside: list = field(default_factory=list)  # [Q][D] -> (float32 values sorted, int64 counts)

    def __post_init__(self) -> None:
        q, d = self.bracket.low.shape
        if self.below is None:
            self.below = np.zeros((q, d), np.int64)
        if not self.inside:
            empty = (np.zeros(0, np.float32), np.zeros(0, np.int64))
            self.inside = [[empty for _ in range(d)] for _ in range(q)]

    def update(self, x: np.ndarray) -> None:
        """Count the float32 rows ``x`` [n, D]."""
        x = np.asarray(x, np.float32)
        if not len(x):
            return
        low, high = self.bracket.low, self.bracket.high
        self.count += len(x)
        for q in range(low.shape[0]):
            self.below[q] += (x < low[q]).sum(axis=0)
            inside = (x >= low[q]) & (x <= high[q])
            for d in range(low.shape[1]):
                values, counts = np.unique(x[inside[:, d], d], return_counts=True)
                self.inside[q][d] = _merge_counts(self.inside[q][d], (values, counts.astype(np.int64)))

    def merge(self, other: BracketCounts) -> BracketCounts:
        self.count += other.count
        self.below += other.below
        for q, row in enumerate(other.inside):
            for d, pair in enumerate(row):
                self.inside[q][d] = _merge_counts(self.inside[q][d], pair)
        return self

    def select(self, qs=QUANTILES) -> np.ndarray:
        """float64 [Q, D] exact quantiles; raises :class:`BracketMiss` when an interval missed a rank."""
        lo, hi, gamma = quantile_positions(self.count, qs)
        num_q, num_d = self.below.shape
        a = np.zeros((num_q, num_d), np.float32)
        b = np.zeros((num_q, num_d), np.float32)
        misses = []
        if self.count == 0:
            return np.zeros((num_q, num_d))
        for q in range(num_q):
            for d in range(num_d):
                values, counts = self.inside[q][d]
                below = int(self.below[q, d])
                if below > lo[q]:
                    misses.append((q, d, "low"))
                if below + int(counts.sum()) <= hi[q]:
                    misses.append((q, d, "high"))
                if misses and misses[-1][:2] == (q, d):
                    continue
                cum = np.cumsum(counts)
                a[q, d], b[q, d] = values[np.searchsorted(cum, [lo[q] - below, hi[q] - below], side="right")]
        if misses:
            raise BracketMiss(misses)
        return numpy_lerp(a, b, gamma)

    def to_bytes(self) -> bytes:
        arrays = {"low": self.bracket.low, "high": self.bracket.high, "below": self.below,
                  "count": np.array([self.count], np.int64)}
        for q, row in enumerate(self.inside):
            for d, (values, counts) in enumerate(row):
                arrays[f"v{q}_{d}"], arrays[f"c{q}_{d}"] = values, counts
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BracketCounts:
        with np.load(io.BytesIO(data)) as z:
            low, high, below = z["low"], z["high"], z["below"]
            inside = [[(z[f"v{q}_{d}"], z[f"c{q}_{d}"]) for d in range(low.shape[1])] for q in range(low.shape[0])]
            return cls(Bracket(low, high), int(z["count"][0]), below, inside)


def _merge_counts(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Union of two (sorted distinct values, counts) lists, counts of equal values added."""
    if not len(a[0]):
        return b
    if not len(b[0]):
        return a
    values, index = np.unique(np.concatenate([a[0], b[0]]), return_inverse=True)
    counts = np.zeros(len(values), np.int64)
    np.add.at(counts, index, np.concatenate([a[1], b[1]]))
    return values, counts
