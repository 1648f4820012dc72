"""Test helper: build a minimal raw episode (reader-output layout) from a spec's features."""

from __future__ import annotations

import re
import zlib

import numpy as np

_SHAPED = re.compile(r"^(Image|Tensor)\(([^)]*)\)\s+(\w+)(.*)$")


def _dims(text: str) -> tuple:
    return tuple(int(d) for d in text.replace(" ", "").split(",") if d)


def _leaf(kind: str, t: int | None):
    """A value for one feature leaf: per-step array when ``t`` is given, else an episode-level value."""
    n = 1 if t is None else t
    m = _SHAPED.match(kind)
    if m:
        family, dims, dtype, rest = m.group(1), _dims(m.group(2)), m.group(3), m.group(4)
        if family == "Image":
            out = np.full(n, b"\xff\xd8img", object)
        elif "zlib" in rest:
            out = np.full(n, zlib.compress(np.zeros(dims, dtype).tobytes()), object)
        else:
            out = np.zeros((n, *dims), dtype)
    elif kind.startswith("Scalar"):
        dtype = kind.split()[1]
        out = np.zeros(n, bool if dtype == "bool" else dtype)
    elif kind == "bool":
        out = np.zeros(n, bool)
    else:  # Text / string
        out = np.full(n, b"", object)
    return out if t is not None else out[0]


def _fill(features: dict, t: int | None) -> dict:
    return {k: _fill(v, t) if isinstance(v, dict) else _leaf(v, t) for k, v in features.items()}


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def num_steps(tree: dict) -> int:
    for v in tree.values():
        if isinstance(v, dict):
            return num_steps(v)
        return len(v)
    raise ValueError("empty")


def build_raw(spec, steps: dict, episode: dict | None = None, *, index: int = 0) -> dict:
    """Raw episode: ``steps`` (nested like features["steps"]) over minimal filler for every other key."""
    t = num_steps(steps)
    raw = {
        k: _fill(v, None) if isinstance(v, dict) else _leaf(v, None)
        for k, v in spec.features.items()
        if k != "steps"
    }
    raw = _merge(raw, episode or {})
    raw["steps"] = _merge(_fill(spec.features["steps"], t), steps)
    raw["_source"] = {
        "file": f"gs://bucket/{spec.name}/{spec.name}-train.tfrecord-00000-of-00001",
        "index": index,
    }
    return raw


def from_synth(spec, synth: dict, *, index: int = 0) -> dict:
    """Raw episode from synthesize_raw_steps output (its "_episode" goes to the top level)."""
    synth = dict(synth)
    episode = synth.pop("_episode", {})
    return build_raw(spec, synth, episode, index=index)
