"""Action / proprio normalization with a dataset's statistics (OpenVLA's BOUNDS_Q99 scheme).

BOUNDS_Q99, per dimension ``d``::

    y[d] = clip(2 * (x[d] - q01[d]) / (q99[d] - q01[d] + 1e-8) - 1, -1, 1)   where mask[d]
    y[d] = x[d]                                                             where not mask[d]
    y[d] = 0.0                                       where min[d] == max[d]  (constant-dims rule)

The constant-dims rule is applied AFTER normalization and regardless of the mask, for action and
proprio alike (so a constant gripper column becomes 0.0). Proprio has no mask: every dim is
normalized. Statistics come from ``dataset_statistics.json`` (OpenVLA format, keyed by dataset).

Arithmetic exactly as OpenVLA's TensorFlow graph does it (same bits, so the same token at every bin
edge): the statistics stay the float64 values of the JSON file; the frame ``x`` is float32;
``2 * (x - float32(q01))`` is float32; the denominator ``q99 - q01 + 1e-8`` is computed in float64
(numpy, before TF sees it) and then rounded to float32; the division, ``- 1`` and the clip are
float32. So an action exactly at q99 gives 1.0 (token 31744) when 1e-8 is below float32 resolution
of ``q99 - q01`` (e.g. q01 = -0.25, q99 = 0.25), and 0.99999976 (token 31745) for q01 = -0.3,
q99 = 0.35, as in OpenVLA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError

__all__ = ["NormStats", "DatasetNorm", "normalize_bounds_q99", "parse_dataset_norm"]

_EPS = 1e-8


@dataclass(frozen=True, slots=True, kw_only=True)
class NormStats:
    """Per-dimension statistics of one array key (action or proprio)."""

    q01: np.ndarray  # float64 [D] (the JSON values)
    q99: np.ndarray  # float64 [D]
    min: np.ndarray  # float64 [D]
    max: np.ndarray  # float64 [D]
    mask: np.ndarray  # bool [D]; dims normalized (others passed through)


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetNorm:
    action: NormStats
    proprio: NormStats | None


def normalize_bounds_q99(x: np.ndarray, stats: NormStats) -> np.ndarray:
    """Normalize ``x`` [..., D] with BOUNDS_Q99 + mask + constant-dims rule; returns float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != stats.q01.shape[0]:
        raise ValueError(f"normalize: array has {x.shape[-1]} dims but statistics have {stats.q01.shape[0]}")
    q01 = np.asarray(stats.q01, np.float64)
    span = (np.asarray(stats.q99, np.float64) - q01 + _EPS).astype(np.float32)  # float64, then float32
    scaled = np.clip(np.float32(2) * (x - q01.astype(np.float32)) / span - np.float32(1), -1, 1)
    out = np.where(stats.mask, scaled, x)
    out = np.where(np.asarray(stats.min) == np.asarray(stats.max), np.float32(0), out)
    return out.astype(np.float32)


def _vec(entry: dict, key: str, where: str, dim: int | None) -> np.ndarray:
    if key not in entry:
        raise UserError(f"{where}: missing '{key}' (expected OpenVLA dataset_statistics format)")
    arr = np.asarray(entry[key], dtype=np.float64).reshape(-1)
    if dim is not None and arr.shape[0] != dim:
        raise UserError(f"{where}: '{key}' has {arr.shape[0]} values, expected {dim}")
    return arr


def _parse_stats(entry: dict, where: str, *, with_mask: bool) -> NormStats:
    q01 = _vec(entry, "q01", where, None)
    dim = q01.shape[0]
    mask = np.ones(dim, dtype=bool)
    if with_mask and "mask" not in entry and dim == 7:
        mask[6] = False  # OpenVLA's EEF_POS default: the absolute gripper dim is passed through
    if with_mask and "mask" in entry:
        mask = np.asarray(entry["mask"], dtype=bool).reshape(-1)
        if mask.shape[0] != dim:
            raise UserError(f"{where}: 'mask' has {mask.shape[0]} values, expected {dim}")
    return NormStats(q01=q01, q99=_vec(entry, "q99", where, dim), min=_vec(entry, "min", where, dim),
                     max=_vec(entry, "max", where, dim), mask=mask)


def parse_dataset_norm(stats: dict, dataset_name: str, *, where: str = "dataset_statistics.json") -> DatasetNorm:
    """Build a :class:`DatasetNorm` from a parsed ``dataset_statistics.json`` dict."""
    entry = stats.get(dataset_name)
    if entry is None:
        if len(stats) == 1 and "action" in next(iter(stats.values())):
            entry = next(iter(stats.values()))
        else:
            raise UserError(f"{where}: no statistics for dataset '{dataset_name}' (keys: {sorted(stats)})")
    if "action" not in entry:
        raise UserError(f"{where}: '{dataset_name}' has no 'action' statistics")
    action = _parse_stats(entry["action"], f"{where}[{dataset_name}].action", with_mask=True)
    proprio = None
    if "proprio" in entry:
        proprio = _parse_stats(entry["proprio"], f"{where}[{dataset_name}].proprio", with_mask=False)
    return DatasetNorm(action=action, proprio=proprio)
