"""Named action building blocks for user-registered datasets (``dataset_mixtures/registry/*.yaml``).

A user dataset's action standardization is a list of steps ``{op: <block>, <param>: <value>}``
applied in order to a working float32 array ``a [T, n]`` (the raw action source columns). Every
block wraps one conversion of :mod:`pipeline.data.oxe.transforms` (the same ones the built-in OXE
datasets use) and knows:

- ``forward(a, p, ctx) -> (a, keep)``: the conversion; ``keep`` = row indices kept (None = all);
- ``inverse(a, p, n_in, ctx) -> Inv``: canonical -> raw values, for ``vla fixture``;
- ``dims(n_in, p) -> n_out``: the static column count (so a YAML entry is checked without data).

Gripper blocks act on column ``dim`` (default -1, the last one). After all steps the array must have
7 columns: dx, dy, dz, droll, dpitch, dyaw, gripper (1 = open, 0 = closed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.data.oxe import transforms as tf

__all__ = ["BLOCKS", "GRIPPER_CONVENTIONS", "Block", "Inv", "Param", "block_help"]

F32 = np.float32
REQUIRED = object()


@dataclass(frozen=True)
class Param:
    kind: type | tuple  # accepted python type(s)
    default: object = REQUIRED
    help: str = ""


@dataclass
class Inv:
    """Inverse result: raw working array, extra raw step values (path below steps -> array),
    rows added before / after (raw steps the forward direction drops)."""

    a: np.ndarray
    extra: dict = field(default_factory=dict)
    lead: int = 0
    trail: int = 0
    constant: dict = field(default_factory=dict)  # canonical dim -> value the source cannot carry


@dataclass(frozen=True)
class Block:
    forward: Callable
    inverse: Callable
    dims: Callable
    help: str
    params: dict = field(default_factory=dict)
    gripper: bool = False


def _col(p: dict, n: int) -> int:
    d = int(p["dim"])
    if not -n <= d < n:
        raise ValueError(f"dim={d} is outside the {n} action columns at this step")
    return d % n


def _gripper_block(fn: Callable, inv: Callable, text: str, **params: Param) -> Block:
    def forward(a, p, ctx):
        out = a.copy()
        d = _col(p, a.shape[1])
        out[:, d] = fn(a[:, d], p)
        return out, None

    def inverse(a, p, n_in, ctx):
        out = a.copy()
        d = _col(p, a.shape[1])
        out[:, d] = inv(a[:, d], p)
        return Inv(out)

    def dims(n, p):
        _col(p, n)
        return n

    return Block(forward, inverse, dims, text, {"dim": Param(int, -1, "column index"), **params}, gripper=True)


# ------------------------------------------------------------------------------- column blocks
def _dims_list(p: dict, n: int, key: str = "dims") -> list[int]:
    dims = [int(d) for d in p[key]]
    bad = [d for d in dims if not -n <= d < n]
    if bad or not dims:
        raise ValueError(f"{key}={p[key]}: expected column indices in [0, {n}) (the source has {n} columns)")
    return [d % n for d in dims]


def _select_fwd(a, p, ctx):
    return a[:, _dims_list(p, a.shape[1])], None


def _select_inv(a, p, n_in, ctx):
    out = np.zeros((len(a), n_in), F32)
    out[:, _dims_list(p, n_in)] = a
    return Inv(out)


def _at(p: dict, n: int, width: int) -> int:
    at = int(p["at"])
    if not 0 <= at <= n - width:
        raise ValueError(f"at={at}: needs {width} columns from there, the action has {n}")
    return at


def _quat_fwd(a, p, ctx):
    at = _at(p, a.shape[1], 4)
    return np.concatenate([a[:, :at], tf.quat_to_euler(a[:, at:at + 4]), a[:, at + 4:]], 1), None


def _quat_inv(a, p, n_in, ctx):
    at = _at(p, n_in, 4)
    return Inv(np.concatenate([a[:, :at], tf.euler_to_quat(a[:, at:at + 3]), a[:, at + 3:]], 1))


def _quat_dims(n, p):
    _at(p, n, 4)
    return n - 1


def _axis_fwd(a, p, ctx):
    at = _at(p, a.shape[1], 3)
    return np.concatenate([a[:, :at], tf.axis_angle_to_euler(a[:, at:at + 3]), a[:, at + 3:]], 1), None


def _euler_to_axis_angle(rpy: np.ndarray) -> np.ndarray:
    q = tf.euler_to_quat(rpy).astype(np.float64)
    q *= np.where(q[:, 3:4] < 0, -1.0, 1.0)  # w >= 0: angle in [0, pi]
    angle = 2.0 * np.arccos(np.clip(q[:, 3], -1.0, 1.0))
    s = np.sqrt(np.maximum(1.0 - q[:, 3] ** 2, 0.0))
    axis = np.where(s[:, None] > 1e-12, q[:, :3] / np.where(s > 1e-12, s, 1.0)[:, None], 0.0)
    return (axis * angle[:, None]).astype(F32)


def _axis_inv(a, p, n_in, ctx):
    at = _at(p, n_in, 3)
    return Inv(np.concatenate([a[:, :at], _euler_to_axis_angle(a[:, at:at + 3]), a[:, at + 3:]], 1))


def _same_at3(n, p):
    _at(p, n, 3)
    return n


def _pad_rot_fwd(a, p, ctx):
    return np.concatenate([tf.zero_pad_rot(a[:, :3]), a[:, 3:]], 1), None


def _pad_rot_inv(a, p, n_in, ctx):
    return Inv(np.concatenate([a[:, :3], a[:, 6:]], 1), constant={3: 0.0, 4: 0.0, 5: 0.0})


def _pad_rot_dims(n, p):
    if n < 3:
        raise ValueError(f"needs >= 3 translation columns, the action has {n}")
    return n + 3


def _pad7_fwd(a, p, ctx):
    return np.concatenate([a, np.zeros((len(a), 7 - a.shape[1]), F32)], 1), None


def _pad7_inv(a, p, n_in, ctx):
    return Inv(a[:, :n_in].copy(), constant={d: 0.0 for d in range(n_in, 7)})


def _pad7_dims(n, p):
    if n > 7:
        raise ValueError(f"the action already has {n} > 7 columns")
    return 7


def _wrap_fwd(a, p, ctx):
    out = a.copy()
    cols = _dims_list(p, a.shape[1])
    out[:, cols] = tf.wrap_angle(a[:, cols])
    return out, None


def _identity_inv(a, p, n_in, ctx):
    return Inv(a.copy())


def _scale_fwd(a, p, ctx):
    out = a.copy()
    cols = _dims_list(p, a.shape[1])
    out[:, cols] = a[:, cols] * F32(p["factor"])
    return out, None


def _scale_inv(a, p, n_in, ctx):
    if float(p["factor"]) == 0.0:
        raise ValueError("scale with factor=0 has no inverse")
    out = a.copy()
    cols = _dims_list(p, n_in)
    out[:, cols] = a[:, cols] / F32(p["factor"])
    return Inv(out)


def _checked_cols(n, p):
    _dims_list(p, n)
    return n


# ------------------------------------------------------------------------------- step-dropping blocks
def _drop_first_fwd(a, p, ctx):
    return a[1:], np.arange(1, len(a))


def _drop_first_inv(a, p, n_in, ctx):
    return Inv(np.concatenate([np.zeros((1, a.shape[1]), F32), a]), lead=1)


def _relabel_fwd(a, p, ctx):
    """BRIDGE_RELABEL: movement = next state - state (first 6 values of ``state``), gripper = dim 6."""
    states = ctx.state(p["state"])
    out = tf.bridge_relabel(a[:, :7], states, wrap=bool(p["wrap"]))
    return out, np.arange(len(a) - 1)


def _relabel_inv(a, p, n_in, ctx):
    t = len(a)
    width = ctx.width(p["state"])
    states = np.zeros((t + 1, width), F32)
    states[0, :6] = ctx.start_pose()
    states[1:, :6] = states[0, :6] + np.cumsum(a[:, :6].astype(np.float64), axis=0)
    raw = np.zeros((t + 1, n_in), F32)
    raw[:t, 6] = a[:, 6]
    return Inv(raw, extra={p["state"]: states}, trail=1)


def _relabel_dims(n, p):
    if n < 7:
        raise ValueError(f"bridge_relabel reads the gripper from column 6; the action has {n} columns")
    return 7


BLOCKS: dict[str, Block] = {
    "select": Block(_select_fwd, _select_inv, lambda n, p: len(_dims_list(p, n)),
                    "keep/reorder source columns: dims=[i, j, ...]", {"dims": Param(list)}),
    "quat_to_euler": Block(_quat_fwd, _quat_inv, _quat_dims,
                           "QUAT2EULER: 4 columns (x,y,z,w) from `at` -> roll,pitch,yaw", {"at": Param(int, 3)}),
    "axis_angle_to_euler": Block(_axis_fwd, _axis_inv, _same_at3,
                                 "rotation vector (3 columns from `at`) -> roll,pitch,yaw", {"at": Param(int, 3)}),
    "zero_pad_rot": Block(_pad_rot_fwd, _pad_rot_inv, _pad_rot_dims,
                          "ZERO_PAD_ROT: insert 3 zero rotation columns after xyz (translation-only robots)"),
    "pad_to7": Block(_pad7_fwd, _pad7_inv, _pad7_dims, "zero-pad a short action to 7 columns"),
    "wrap_angle": Block(_wrap_fwd, _identity_inv, _checked_cols, "wrap columns into [-pi, pi)",
                        {"dims": Param(list, [3, 4, 5])}),
    "scale": Block(_scale_fwd, _scale_inv, _checked_cols, "multiply columns by factor (units)",
                   {"dims": Param(list), "factor": Param((int, float))}),
    "drop_first_step": Block(_drop_first_fwd, _drop_first_inv, lambda n, p: n,
                             "DROP_FIRST_STEP: drop step 0 (a leading no-op step)"),
    "bridge_relabel": Block(_relabel_fwd, _relabel_inv, _relabel_dims,
                            "BRIDGE_RELABEL: movement = state[t+1]-state[t] (first 6), gripper = column 6; "
                            "drops the last step", {"state": Param(str, "observation/state"),
                                                    "wrap": Param(bool, False)}),
    "rel2abs_gripper": _gripper_block(lambda x, p: tf.rel2abs_gripper(x), lambda x, p: tf.rel2abs_inverse(x),
                                      "REL2ABS: relative command (+1 close, -1 open, 0 hold) -> 1 open / 0 closed"),
    "invert": _gripper_block(lambda x, p: tf.invert(x), lambda x, p: tf.invert(x),
                             "INVERT: 1 - x (1 = closed -> 1 = open)"),
    "clip01": _gripper_block(lambda x, p: tf.clip01(x), lambda x, p: tf.clip01_inverse(x),
                             "CLIP01: clamp into [0, 1] (-1/+1 command -> 0/1)"),
    "binarize_backfill": _gripper_block(
        lambda x, p: tf.binarize_backfill(x, round_tail=bool(p["round_tail"])),
        lambda x, p: (np.asarray(x) >= 0.5).astype(F32),
        "BINARIZE_BACKFILL: continuous (1 ~ open) -> 0/1, intermediate values take the next decisive one",
        round_tail=Param(bool, True, "trailing intermediate values rounded (True) or kept raw (OpenVLA)")),
}

# action.gripper shorthand -> gripper steps appended after action.steps (applied to the last column)
GRIPPER_CONVENTIONS: dict[str, tuple[str, ...]] = {
    "absolute": (),  # already 1 = open, 0 = closed
    "inverted": ("invert",),  # 1 = closed, 0 = open
    "relative": ("rel2abs_gripper",),  # +1 close / -1 open / 0 hold events
    "signed": ("clip01",),  # +1 open, -1 closed
    "inverted_signed": ("clip01", "invert"),  # +1 closed, -1 open
    "continuous": ("binarize_backfill",),  # continuous opening in [0, 1], 1 ~ open
    "continuous_inverted": ("invert", "binarize_backfill"),  # continuous closedness in [0, 1]
}


def block_help() -> str:
    """One line per block: name(params): help."""
    lines = []
    for name, block in BLOCKS.items():
        params = ", ".join(k if v.default is REQUIRED else f"{k}={v.default}" for k, v in block.params.items())
        lines.append(f"  {name}({params}): {block.help}")
    return "\n".join(lines)
