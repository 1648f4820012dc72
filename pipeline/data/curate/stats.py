"""Mergeable per-dataset statistics of actions and proprio (OpenVLA ``dataset_statistics.json``).

Each curation task builds a :class:`PartialStats` over the frames it counts (every split, before the
episode filters: OpenVLA's split "all"); partials from any number
of tasks merge (:meth:`PartialStats.merge`) and :meth:`PartialStats.finalize` produces OpenVLA's
per-dataset fields: ``mean, std, min, max, q01, q99`` for ``action`` and ``proprio``, the action
``mask`` (gripper left unnormalized: ``[True] * 6 + [False]``), ``num_transitions`` and
``num_trajectories``.

Moments are merged exactly with Chan et al.'s pairwise update (count, mean, M2 in float64);
``std`` is the population standard deviation (``ddof=0``, like ``np.std``).

``q01``/``q99`` are exact (:mod:`pipeline.data.curate.quantiles`, a second pass that this sketch
brackets); :meth:`PartialStats.finalize` takes them as ``quantiles``. Without them it reports the
sketch's own estimate, from :class:`QuantileSketch`, a deterministic multi-level compactor sketch
(Manku-Rajagopalan-Lindsay / KLL family, equal capacity ``k`` per level, vectorized over the
dimensions). Level ``h`` holds items of weight ``2**h``; a level that reaches ``k`` items is sorted
(per dimension) and every other item is promoted to level ``h + 1``; the start offset (0 or 1) is
a fixed pseudo-random bit per (level, compaction number), as in KLL, so the per-compaction errors
cancel on average instead of adding up, while staying deterministic. Guarantee: one compaction at level ``h`` moves any rank by at most ``2**h``,
and each compaction consumes at least ``k`` items of weight ``2**h``, so after ``n`` items (however
they were split into partials and merged) the rank error of every quantile is at most
``(H + 2) * n / k`` with ``H`` the number of levels that ever compacted (``H <= log2(n / k) + 1``;
the ``+ 2`` covers interpolating between items of weight ``<= 2n/k``). With the default
``k = 4096`` that is <= 0.33 % of ``n`` for 3.8 M frames (fractal) and <= 0.13 % below 16 k frames. While no compaction has happened (``n < k`` items in total) the sketch holds
every value and the quantiles equal ``numpy.quantile`` (linear interpolation) exactly.
:meth:`QuantileSketch.rank_error_bound` reports the bound for the data seen.

Determinism: merging the same partials in the same order gives bit-identical results, so curation
merges per-shard partials in source-shard order.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from pipeline.data.curate.quantiles import QUANTILES
from pipeline.data.schema import ACTION_DIM, GRIPPER_DIM

__all__ = [
    "QuantileSketch",
    "Moments",
    "ArrayStats",
    "PartialStats",
    "DEFAULT_SKETCH_K",
    "action_mask",
]

DEFAULT_SKETCH_K = 4096


def action_mask(action_dim: int = ACTION_DIM, gripper_dim: int = GRIPPER_DIM) -> list[bool]:
    """OpenVLA's EEF_POS normalization mask: every dim but the absolute gripper is normalized."""
    return [i != gripper_dim for i in range(action_dim)]


@dataclass
class QuantileSketch:
    """Mergeable quantile sketch over ``dim`` columns; see the module docstring for the guarantee."""

    dim: int
    k: int = DEFAULT_SKETCH_K
    levels: list[np.ndarray] = field(default_factory=list)  # level h: float32 [m_h, dim], weight 2**h
    flips: list[int] = field(default_factory=list)  # per level: number of compactions so far
    count: int = 0
    _pending: list = field(default_factory=list, repr=False)  # level-0 rows not yet concatenated
    _pending_n: int = 0

    def __post_init__(self) -> None:
        if self.k < 2 or self.k % 2:
            raise ValueError(f"QuantileSketch k must be an even number >= 2, got {self.k}")

    def update(self, x: np.ndarray) -> None:
        """Add rows ``x`` float[n, dim]."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.dim)
        if len(x) == 0:
            return
        self._pending.append(x.copy())
        self._pending_n += len(x)
        self.count += len(x)
        held = len(self.levels[0]) if self.levels else 0
        if held + self._pending_n >= self.k:
            self._flush()

    def _flush(self) -> None:
        """Move pending rows into level 0 and compact (same result as adding them one batch at a time
        would give for the compaction schedule: compaction only happens once level 0 reaches k)."""
        if self._pending:
            self._add(0, np.concatenate(self._pending))
            self._pending, self._pending_n = [], 0
            self._compress()

    def merge(self, other: QuantileSketch) -> None:
        if other.dim != self.dim or other.k != self.k:
            raise ValueError(f"cannot merge sketches of dim/k {other.dim}/{other.k} into {self.dim}/{self.k}")
        self._flush()
        other._flush()
        for h, items in enumerate(other.levels):
            if len(items):
                self._add(h, items)
        self.count += other.count
        self._compress()

    def _add(self, h: int, items: np.ndarray) -> None:
        while len(self.levels) <= h:
            self.levels.append(np.zeros((0, self.dim), np.float32))
            self.flips.append(0)
        self.levels[h] = np.concatenate([self.levels[h], items]) if len(self.levels[h]) else items.copy()

    def _compress(self) -> None:
        h = 0
        while h < len(self.levels):
            items = self.levels[h]
            if len(items) >= self.k:
                items = np.sort(items, axis=0)
                keep_back = items[-1:] if len(items) % 2 else items[:0]  # an odd item stays here
                even = items[: len(items) - len(keep_back)]
                promoted = even[_offset(h, self.flips[h]) :: 2]
                self.flips[h] += 1
                self.levels[h] = keep_back.copy()
                self._add(h + 1, promoted)
            h += 1

    @property
    def exact(self) -> bool:
        """True while every value is held (no compaction yet)."""
        self._flush()
        return all(len(lv) == 0 for lv in self.levels[1:])

    def rank_error_bound(self) -> float:
        """Upper bound on |estimated rank - true rank| / n for any quantile (0.0 while exact)."""
        if self.count == 0 or self.exact:
            return 0.0
        compacted = sum(1 for f in self.flips if f)
        return (compacted + 2) / self.k  # + 2/k: interpolation between items of weight <= 2n/k

    def quantiles(self, qs: tuple[float, ...] | list[float]) -> np.ndarray:
        """float64 [len(qs), dim]; equals ``np.quantile(values, qs, axis=0)`` while exact."""
        self._flush()
        if self.count == 0:
            return np.zeros((len(qs), self.dim))
        if self.exact:
            return np.quantile(self.levels[0], qs, axis=0).astype(np.float64)
        values = np.concatenate(self.levels)  # [m, dim]
        weights = np.concatenate([np.full(len(lv), 2.0**h) for h, lv in enumerate(self.levels)])
        out = np.zeros((len(qs), self.dim))
        for d in range(self.dim):
            order = np.argsort(values[:, d], kind="stable")
            col, w = values[order, d], weights[order]
            centers = np.cumsum(w) - (w + 1) / 2  # 0-based sorted position of each item's centre
            out[:, d] = np.interp(np.asarray(qs) * (self.count - 1), centers, col)
        return out

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        self._flush()
        arrays = {f"{prefix}meta": np.array([self.dim, self.k, self.count], np.int64),
                  f"{prefix}flips": np.array(self.flips, np.int64)}
        arrays.update({f"{prefix}level{h}": lv for h, lv in enumerate(self.levels)})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> QuantileSketch:
        dim, k, count = (int(v) for v in arrays[f"{prefix}meta"])
        flips = [int(f) for f in arrays[f"{prefix}flips"]]
        levels = [np.asarray(arrays[f"{prefix}level{h}"], np.float32).reshape(-1, dim) for h in range(len(flips))]
        return cls(dim=dim, k=k, levels=levels, flips=flips, count=count)


@dataclass
class Moments:
    """Count, mean, M2 (sum of squared deviations), min, max per column; exact pairwise merge."""

    dim: int
    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        if len(x) == 0:
            return
        mean = x.mean(axis=0)
        other = Moments(self.dim, len(x), mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0))
        self.merge(other)

    def merge(self, other: Moments) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.copy(), other.m2.copy()
            self.min, self.max = other.min.copy(), other.max.copy()
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.count = n

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros(self.dim)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        if self.count == 0:
            return {f"{prefix}count": np.array([0, self.dim], np.int64)}
        return {f"{prefix}count": np.array([self.count, self.dim], np.int64), f"{prefix}mean": self.mean,
                f"{prefix}m2": self.m2, f"{prefix}min": self.min, f"{prefix}max": self.max}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> Moments:
        count, dim = (int(v) for v in arrays[f"{prefix}count"])
        if count == 0:
            return cls(dim)
        return cls(dim, count, *(np.asarray(arrays[f"{prefix}{k}"], np.float64) for k in ("mean", "m2", "min", "max")))


@dataclass
class ArrayStats:
    """Moments + quantile sketch of one array key (``action`` or ``proprio``)."""

    dim: int
    k: int = DEFAULT_SKETCH_K
    moments: Moments = None  # type: ignore[assignment]
    sketch: QuantileSketch = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.moments = self.moments or Moments(self.dim)
        self.sketch = self.sketch or QuantileSketch(self.dim, self.k)

    def update(self, x: np.ndarray) -> None:
        self.moments.update(x)
        self.sketch.update(x)

    def merge(self, other: ArrayStats) -> None:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of width {other.dim} into width {self.dim}")
        self.moments.merge(other.moments)
        self.sketch.merge(other.sketch)

    def finalize(self, quantiles: np.ndarray | None = None) -> dict[str, list[float]]:
        """OpenVLA's fields; ``quantiles`` float64 [2, dim] (q01, q99) when known exactly."""
        q01, q99 = self.sketch.quantiles(QUANTILES) if quantiles is None else quantiles
        m = self.moments
        zeros = np.zeros(self.dim)
        return {
            "mean": _floats(m.mean if m.count else zeros), "std": _floats(m.std()),
            "max": _floats(m.max if m.count else zeros), "min": _floats(m.min if m.count else zeros),
            "q01": _floats(q01), "q99": _floats(q99),
        }


def _offset(level: int, compaction: int) -> int:
    """Pseudo-random but deterministic start offset (0/1) of a compaction (splitmix64 bit)."""
    z = (level * 0x9E3779B97F4A7C15 + compaction * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return int((z ^ (z >> 31)) >> 63)


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a, np.float64)]


@dataclass
class PartialStats:
    """Mergeable statistics of one dataset's kept frames (one curation task's share, or all)."""

    action_dim: int = ACTION_DIM
    proprio_dim: int | None = None  # set by the first update
    k: int = DEFAULT_SKETCH_K
    num_trajectories: int = 0
    action: ArrayStats = None  # type: ignore[assignment]
    proprio: ArrayStats | None = None

    def __post_init__(self) -> None:
        self.action = self.action or ArrayStats(self.action_dim, self.k)
        if self.proprio is None and self.proprio_dim is not None:
            self.proprio = ArrayStats(self.proprio_dim, self.k)

    @property
    def num_transitions(self) -> int:
        return self.action.moments.count

    def update(self, action: np.ndarray, proprio: np.ndarray) -> None:
        """Add one trajectory: ``action`` float[T, 7], ``proprio`` float[T, P]."""
        proprio = np.asarray(proprio).reshape(len(action), -1)
        self._ensure_proprio(proprio.shape[1])
        self.action.update(action)
        self.proprio.update(proprio)  # type: ignore[union-attr]
        self.num_trajectories += 1

    def _ensure_proprio(self, dim: int) -> None:
        if self.proprio is None:
            self.proprio_dim, self.proprio = dim, ArrayStats(dim, self.k)
        elif self.proprio.dim != dim:
            raise ValueError(f"proprio width changed from {self.proprio.dim} to {dim} within one dataset")

    def merge(self, other: PartialStats) -> PartialStats:
        self.action.merge(other.action)
        if other.proprio is not None:
            self._ensure_proprio(other.proprio.dim)
            self.proprio.merge(other.proprio)  # type: ignore[union-attr]
        self.num_trajectories += other.num_trajectories
        return self

    def rank_error_bound(self) -> float:
        bounds = [self.action.sketch.rank_error_bound()]
        if self.proprio is not None:
            bounds.append(self.proprio.sketch.rank_error_bound())
        return max(bounds)

    def finalize(self, mask: list[bool] | None = None, quantiles: dict | None = None) -> dict:
        """OpenVLA's per-dataset entry (without the dataset-name key); ``quantiles``: exact
        ``{"action": [2, 7], "proprio": [2, P]}`` (q01, q99) from the second pass, else the sketch's."""
        quantiles = quantiles or {}
        action = self.action.finalize(quantiles.get("action"))
        action["mask"] = list(mask) if mask is not None else action_mask(self.action_dim)
        if self.proprio is not None:
            proprio = self.proprio.finalize(quantiles.get("proprio"))
        else:  # OpenVLA: no proprio key -> statistics of zeros shaped like the action
            proprio = ArrayStats(self.action_dim).finalize()
        return {"action": action, "proprio": proprio, "num_transitions": int(self.num_transitions),
                "num_trajectories": int(self.num_trajectories)}

    # --- serialization (npz bytes; used for per-task partials and the resume cache) ---
    def to_bytes(self) -> bytes:
        arrays = {"header": np.array([self.action_dim, self.proprio_dim or -1, self.k, self.num_trajectories],
                                     np.int64)}
        arrays.update(self.action.moments.to_arrays("a_m_"))
        arrays.update(self.action.sketch.to_arrays("a_s_"))
        if self.proprio is not None:
            arrays.update(self.proprio.moments.to_arrays("p_m_"))
            arrays.update(self.proprio.sketch.to_arrays("p_s_"))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PartialStats:
        with np.load(io.BytesIO(data)) as z:
            arrays = {k: z[k] for k in z.files}
        action_dim, proprio_dim, k, trajs = (int(v) for v in arrays["header"])
        action = ArrayStats(action_dim, k, Moments.from_arrays(arrays, "a_m_"),
                            QuantileSketch.from_arrays(arrays, "a_s_"))
        proprio = None
        if proprio_dim >= 0:
            proprio = ArrayStats(proprio_dim, k, Moments.from_arrays(arrays, "p_m_"),
                                 QuantileSketch.from_arrays(arrays, "p_s_"))
        return cls(action_dim, proprio_dim if proprio_dim >= 0 else None, k, trajs, action, proprio)
