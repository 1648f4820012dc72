"""Build the DatasetSpec of a resolved user-registry entry (see :mod:`pipeline.data.oxe.user_registry`).

The action standardization is a ``_Program``: the source columns, then the building blocks of
:mod:`pipeline.data.oxe.user_blocks` in order (forward for ``standardize``, reversed inverses for
``synthesize_raw_steps``). Everything here is plain data plus module-level functions bound with
``partial``, so specs pickle (Ray tasks rebuild them from the entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pipeline.data.io.features import FeatureSpec, flatten_spec, parse_type_tree
from pipeline.data.oxe import transforms as tf
from pipeline.data.oxe import user_blocks as ub
from pipeline.data.oxe.spec import DatasetSpec, Std, lookup, step

__all__ = ["spec_from_entry", "block_defaults", "SLICE", "kind", "numel"]

SLICE = re.compile(r"^([^\[\]]+)\[(\d*):(\d*)\]$")


def kind(spec: FeatureSpec) -> str:
    """"bytes" (images, text, strings, byte tensors) or "num"."""
    return "bytes" if spec.kind in ("image", "text") or spec.dtype == "string" or spec.encoding == "bytes" else "num"


def numel(spec: FeatureSpec) -> int:
    """Values per step of a feature (a scalar counts 1)."""
    return int(np.prod([d or 1 for d in spec.shape])) if spec.shape else 1


def block_defaults(op: str) -> dict:
    """Default parameters of building block ``op``."""
    return {k: p.default for k, p in ub.BLOCKS[op].params.items() if p.default is not ub.REQUIRED}


@dataclass(frozen=True)
class _Program:
    sources: tuple  # ((path below steps, width, shape, dtype, zlib), ...)
    steps: tuple  # ((op, params dict), ...)
    dims_in: tuple  # action columns entering each step
    slices: tuple  # ((state key, base key, lo, hi), ...) for "key[a:b]" state keys
    widths: tuple  # ((path below steps, width), ...) of every numeric step feature


class _Ctx:
    """What a block sees: the raw episode and the raw step index of the current rows."""

    def __init__(self, raw: dict, index: np.ndarray) -> None:
        self.raw, self.index = raw, index

    def state(self, path: str) -> np.ndarray:
        values = np.asarray(step(self.raw, *path.split("/")), np.float32)
        return values.reshape(len(values), -1)[self.index]


class _InvCtx:
    def __init__(self, plan: dict, widths: dict) -> None:
        self.plan, self.widths = plan, widths

    def width(self, path: str) -> int:
        return int(self.widths[path])

    def start_pose(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.plan["proprio_xyz"], np.float32)[0],
                               np.asarray(self.plan["proprio_rpy"], np.float32)[0]])


def _read_source(raw: dict, src: tuple) -> np.ndarray:
    path, width, _, _, zlib = src
    values = step(raw, *path.split("/"))
    if zlib or values.dtype == object:
        return tf.zlib_to_float32(values, width)
    return np.asarray(values, np.float32).reshape(len(values), width)


def _transform(raw: dict, fix: bool, *, program: _Program) -> Std:
    a = np.concatenate([_read_source(raw, s) for s in program.sources], axis=1)
    ctx = _Ctx(raw, np.arange(len(a)))
    for op, params in program.steps:
        a, keep = ub.BLOCKS[op].forward(np.asarray(a, np.float32), params, ctx)
        if keep is not None:
            ctx.index = ctx.index[keep]
    derived = {}
    for key, base, lo, hi in program.slices:
        col = np.asarray(step(raw, "observation", base), np.float32)
        derived[key] = col.reshape(len(col), -1)[ctx.index, lo:hi]
    return Std(np.asarray(a, np.float32), derived, ctx.index)


def _pad_rows(x: np.ndarray, lead: int, trail: int) -> np.ndarray:
    if not lead and not trail:
        return x
    return np.concatenate([np.repeat(x[:1], lead, 0), x, np.repeat(x[-1:], trail, 0)])


def _inverse(plan: dict, rng: np.random.Generator, *, program: _Program) -> dict:
    a = np.asarray(plan["action"], np.float32).reshape(-1, 7)
    ctx = _InvCtx(plan, dict(program.widths))
    extra: dict[str, np.ndarray] = {}
    for (op, params), n_in in zip(reversed(program.steps), reversed(program.dims_in)):
        inv = ub.BLOCKS[op].inverse(a, params, n_in, ctx)
        extra = {k: _pad_rows(v, inv.lead, inv.trail) for k, v in extra.items()}
        extra.update(inv.extra)
        a = np.asarray(inv.a, np.float32)
    out: dict[str, Any] = {}
    col = 0
    for path, width, shape, dtype, zlib in program.sources:
        block = a[:, col:col + width]
        col += width
        extra[path] = tf.float32_to_zlib(block) if zlib else block.reshape((len(a), *shape)).astype(dtype)
    for path, value in extra.items():
        node = out
        *parents, leaf = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return out


def _success(raw: dict, *, key: str) -> bool:
    """Episode filter: keep episodes whose episode-level ``key`` is true."""
    return bool(np.asarray(lookup(raw, key)).any())


def spec_from_entry(entry: dict) -> DatasetSpec:
    """Build the DatasetSpec of a resolved entry (plain data: what curation ships to its workers)."""
    features = parse_type_tree(entry["features"])
    steps_tree = features["steps"].feature
    flat = {k[6:]: f.spec for k, f in flatten_spec(features).items() if f.in_sequence}
    sources = tuple((p, numel(flat[p]), tuple(d or 1 for d in flat[p].shape), flat[p].dtype,
                     flat[p].encoding == "zlib") for p in entry["action"]["key"])
    act = entry["action"]
    program_steps = [*act["steps"], *({"op": op, **block_defaults(op)}
                                      for op in ub.GRIPPER_CONVENTIONS[act["gripper"]])]
    dims_in, n = [], sum(s[1] for s in sources)
    for st in program_steps:
        dims_in.append(n)
        n = ub.BLOCKS[st["op"]].dims(n, st)
    slices = []
    for key in entry["state_keys"]:
        m = SLICE.match(key) if isinstance(key, str) else None
        if m:
            width = numel(steps_tree["observation"][m.group(1)])
            slices.append((key, m.group(1), int(m.group(2) or 0), int(m.group(3) or width)))
    program = _Program(
        sources=sources,
        steps=tuple((st["op"], {k: v for k, v in st.items() if k != "op"}) for st in program_steps),
        dims_in=tuple(dims_in), slices=tuple(slices),
        widths=tuple((p, numel(f)) for p, f in flat.items() if kind(f) == "num"))
    filters = tuple((f["op"], partial(_success, key=f["key"])) for f in entry["episode_filters"])
    return DatasetSpec(
        name=entry["name"], version=entry["version"], features=entry["features"], cameras=dict(entry["cameras"]),
        depth=dict(entry["depth"]), state_keys=tuple(entry["state_keys"]), state_encoding=entry["state_encoding"],
        action_encoding=entry["action_encoding"], language_key=entry["language_key"], splits=dict(entry["splits"]),
        episode_filters=filters, state_size=int(entry["state_size"]), control_hz=entry["control_hz"],
        transform=partial(_transform, program=program), inverse=partial(_inverse, program=program),
        episode_id_keys=(entry["episode_id_key"],) if entry["episode_id_key"] else (),
        constant_action_dims={int(k): float(v) for k, v in entry["constant_action_dims"].items()},
        synthesis_notes=f"user dataset from {entry.get('_file', '?')}; state keys are filler values",
    )
