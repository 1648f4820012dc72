"""Nested-dict helpers and trajectory ops on episode dicts (a small dlimp-like surface, numpy only).

API (stable; other modules code against it)::

    tree_map(fn, tree) -> tree                       # fn on every leaf; dict structure kept
    tree_flatten_with_path(tree, sep="/") -> dict[str, leaf]   # {"a/b/c": leaf} in insertion order
    tree_unflatten(flat: dict[str, leaf], sep="/") -> tree
    tree_merge(*trees) -> tree                       # later trees win; dicts merged recursively
    tree_select(tree, keys: Iterable[str], sep="/") -> tree   # keep only these paths/prefixes

    Trajectory ops (pure: a new dict is returned, inputs are not modified). An episode is a dict
    with a "steps" dict of arrays with leading length T; other top-level keys are episode-level.
    traj_len(ep) -> int
    add_frame_indices(ep, *, key="frame_index") -> ep      # steps[key] = arange(T) int64
    broadcast_metadata(ep, *, keys=None, prefix="") -> ep  # episode-level leaves -> steps, repeated T times
    traj_map(fn, episodes) -> Iterator[ep]
    traj_filter(pred, episodes) -> Iterator[ep]
    flatten_to_frames(ep) -> list[dict]                    # frame t = tree_map(x[t], steps)
    frame_map(fn, frames) -> Iterator[frame]

A leaf is anything that is not a dict. ``_source`` and other underscore keys are episode-level keys
like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

__all__ = [
    "tree_map",
    "tree_flatten_with_path",
    "tree_unflatten",
    "tree_merge",
    "tree_select",
    "traj_len",
    "add_frame_indices",
    "broadcast_metadata",
    "traj_map",
    "traj_filter",
    "flatten_to_frames",
    "frame_map",
]


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


def tree_flatten_with_path(tree: dict, sep: str = "/") -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                walk(v, path + sep)
            else:
                out[path] = v

    walk(tree, "")
    return out


def tree_unflatten(flat: dict[str, Any], sep: str = "/") -> dict:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        parts = path.split(sep)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"tree_unflatten: '{path}' goes below the leaf at '{p}'")
        node[parts[-1]] = value
    return out


def tree_merge(*trees: dict) -> dict:
    out: dict[str, Any] = {}
    for tree in trees:
        for k, v in tree.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = tree_merge(out[k], v)
            else:
                out[k] = tree_map(lambda x: x, v) if isinstance(v, dict) else v
    return out


def tree_select(tree: dict, keys: Iterable[str], sep: str = "/") -> dict:
    """Keep only the given paths (a path naming a dict keeps the whole sub-tree). KeyError if absent."""
    out: dict[str, Any] = {}
    for key in keys:
        parts = key.split(sep)
        node: Any = tree
        for p in parts:
            if not isinstance(node, dict) or p not in node:
                raise KeyError(f"tree_select: path '{key}' not found")
            node = node[p]
        out = tree_merge(out, tree_unflatten({key: node}, sep=sep))
    return out


# ------------------------------------------------------------------------------------- trajectories

def traj_len(ep: dict) -> int:
    """Number of steps T (0 for an episode with no step arrays)."""
    for value in tree_flatten_with_path(ep.get("steps", {})).values():
        if not isinstance(value, dict):
            return len(value)
    return 0


def add_frame_indices(ep: dict, *, key: str = "frame_index") -> dict:
    """Reads ``steps``; writes ``steps[key]`` = int64[T] 0..T-1."""
    steps = dict(ep["steps"])
    steps[key] = np.arange(traj_len(ep), dtype=np.int64)
    return {**ep, "steps": steps}


def _repeat(value: Any, T: int) -> np.ndarray:
    if isinstance(value, (bytes, str)) or (isinstance(value, np.ndarray) and value.dtype == object):
        arr = np.empty(T, dtype=object)
        arr[:] = [value] * T
        return arr
    arr = np.asarray(value)
    return np.broadcast_to(arr, (T, *arr.shape)).copy()


def broadcast_metadata(ep: dict, *, keys: Iterable[str] | None = None, prefix: str = "") -> dict:
    """Copy episode-level leaves into ``steps`` (each repeated T times along a new leading axis).

    ``keys``: flat paths of episode-level leaves (default: all top-level keys but ``steps`` and
    those starting with ``_``). Written as ``steps[prefix + path]`` nested like the source path.
    """
    T = traj_len(ep)
    meta = {k: v for k, v in ep.items() if k != "steps" and not k.startswith("_")}
    flat = tree_flatten_with_path(meta)
    if keys is not None:
        keys = list(keys)
        missing = [k for k in keys if k not in flat]
        if missing:
            raise KeyError(f"broadcast_metadata: episode-level key(s) {missing} not found")
        flat = {k: flat[k] for k in keys}
    added = tree_unflatten({prefix + k: _repeat(v, T) for k, v in flat.items()})
    return {**ep, "steps": tree_merge(ep["steps"], added)}


def traj_map(fn: Callable[[dict], dict], episodes: Iterable[dict]) -> Iterator[dict]:
    for ep in episodes:
        yield fn(ep)


def traj_filter(pred: Callable[[dict], bool], episodes: Iterable[dict]) -> Iterator[dict]:
    for ep in episodes:
        if pred(ep):
            yield ep


def flatten_to_frames(ep: dict) -> list[dict]:
    """Split an episode's ``steps`` into T frame dicts (same nesting, leaves indexed at t)."""
    flat = tree_flatten_with_path(ep["steps"])
    T = traj_len(ep)
    for k, v in flat.items():
        if len(v) != T:
            raise ValueError(f"flatten_to_frames: steps/{k} has length {len(v)}, expected {T}")
    return [tree_unflatten({k: v[t] for k, v in flat.items()}) for t in range(T)]


def frame_map(fn: Callable[[dict], dict], frames: Iterable[dict]) -> Iterator[dict]:
    for frame in frames:
        yield fn(frame)
