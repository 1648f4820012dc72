"""Building blocks of the OXE standardization transforms (pure numpy, no TensorFlow).

Each function works on per-step arrays with a leading time axis T and returns new arrays; inputs
are never modified. Names follow the conversion glossary of the facts file
(/work/shared/oxe/datasets.yaml): REL2ABS, INVERT, CLIP01, BINARIZE_BACKFILL, BRIDGE_RELABEL,
QUAT2EULER, DROP_FIRST_STEP, ZERO_PAD_ROT. The ``*_inverse`` helpers are used by
``DatasetSpec.synthesize_raw_steps`` to turn canonical targets back into raw values.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

__all__ = [
    "rel2abs_gripper",
    "rel2abs_inverse",
    "invert",
    "clip01",
    "clip01_inverse",
    "binarize_backfill",
    "bridge_relabel",
    "wrap_angle",
    "quat_to_euler",
    "euler_to_quat",
    "axis_angle_to_euler",
    "matrix_to_euler",
    "zero_pad_rot",
    "decode_code_points",
    "encode_code_points",
    "zlib_to_float32",
    "float32_to_zlib",
    "decode_text",
    "hash_coin",
    "idle_frame_mask",
]

_EVENT_THRESHOLD = 0.1


def rel2abs_gripper(rel: np.ndarray) -> np.ndarray:
    """REL2ABS: relative gripper command [T] (+ close, - open) -> absolute float32[T] (1 open, 0 closed).

    Events: value < -0.1 opens, > +0.1 closes, else no change. Before the first event the gripper is
    in the state opposite to that event; without any event the episode is open.
    """
    rel = np.asarray(rel, dtype=np.float64).reshape(-1)
    event = np.where(rel < -_EVENT_THRESHOLD, 1.0, np.where(rel > _EVENT_THRESHOLD, 0.0, np.nan))
    decided = np.flatnonzero(~np.isnan(event))
    state = 1.0 if decided.size == 0 else 1.0 - event[decided[0]]
    out = np.empty(rel.shape, np.float32)
    for t, e in enumerate(event):  # hold the most recent event
        state = state if np.isnan(e) else e
        out[t] = state
    return out


def rel2abs_inverse(gripper: np.ndarray) -> np.ndarray:
    """Inverse of REL2ABS for a binary gripper [T] (1 open): float32[T] of +1 (close) / -1 (open) / 0.

    An event is emitted at every change; a closed gripper at t=0 gets a close event at t=0
    (an episode without events reads as open). Non-binary values are thresholded at 0.5.
    """
    g = (np.asarray(gripper, np.float64).reshape(-1) >= 0.5).astype(np.float64)
    prev = np.concatenate([[1.0], g[:-1]])
    return np.where(g == prev, 0.0, np.where(g > prev, -1.0, 1.0)).astype(np.float32)


def invert(x: np.ndarray) -> np.ndarray:
    """INVERT: 1 - x (turns "1 = closed" into "1 = open")."""
    return (1.0 - np.asarray(x, np.float32)).astype(np.float32)


def clip01(x: np.ndarray) -> np.ndarray:
    """CLIP01: clamp into [0, 1] (maps a -1/+1 command to 0/1)."""
    return np.clip(np.asarray(x, np.float32), 0.0, 1.0)


def clip01_inverse(x: np.ndarray) -> np.ndarray:
    """A raw value v with clip01(v) == x: 0 -> -1, 1 -> +1, values inside (0, 1) unchanged."""
    x = np.asarray(x, np.float32)
    return np.where(x <= 0.0, -1.0, np.where(x >= 1.0, 1.0, x)).astype(np.float32)


def binarize_backfill(x: np.ndarray, *, round_tail: bool = False) -> np.ndarray:
    """BINARIZE_BACKFILL: continuous gripper [T] (1 ~ open) -> float32[T] of 0/1.

    > 0.95 -> 1, < 0.05 -> 0; an intermediate value takes the decisive value of the nearest LATER
    decisive step. Edge case (kept as in OpenVLA): intermediate values with no later decisive step
    take the raw value of the episode's last step (``round_tail=True``: that value rounded to 0/1).
    """
    x = np.asarray(x, np.float32).reshape(-1)
    out = np.where(x > 0.95, 1.0, np.where(x < 0.05, 0.0, np.nan)).astype(np.float32)
    nxt = x[-1] if x.size else np.float32(0)
    nxt = np.float32(nxt >= 0.5) if round_tail else nxt
    for t in range(x.size - 1, -1, -1):  # backward fill from the end
        if np.isnan(out[t]):
            out[t] = nxt
        else:
            nxt = out[t]
    return out


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Wrap angles (radians) into [-pi, pi)."""
    a = np.asarray(a, np.float64)
    return ((a + np.pi) % (2 * np.pi) - np.pi).astype(np.float32)


def bridge_relabel(actions: np.ndarray, states: np.ndarray, *, wrap: bool = False) -> np.ndarray:
    """BRIDGE_RELABEL: actions [T,7], states [T,>=6] -> float32[T-1, 7].

    Movement dims t = states[t+1, :6] - states[t, :6] (plain subtraction; ``wrap=True`` wraps the
    3 rotation deltas into [-pi, pi)); gripper dim = actions[t, 6]. The final step is dropped.
    """
    s = np.asarray(states, np.float32)[:, :6]
    delta = s[1:] - s[:-1]
    if wrap:
        delta[:, 3:6] = wrap_angle(delta[:, 3:6])
    grip = np.asarray(actions, np.float32)[:-1, 6:7]
    return np.concatenate([delta, grip], axis=1).astype(np.float32)


def matrix_to_euler(r: np.ndarray) -> np.ndarray:
    """Rotation matrices [T,3,3] -> float32[T,3] (roll, pitch, yaw) for R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r = np.asarray(r, np.float64)
    sin_p = np.clip(-r[:, 2, 0], -1.0, 1.0)
    pitch = np.arcsin(sin_p)
    locked = np.abs(sin_p) > 1.0 - 1e-9  # gimbal lock: roll folded into yaw
    roll = np.where(locked, 0.0, np.arctan2(r[:, 2, 1], r[:, 2, 2]))
    yaw = np.where(locked, np.arctan2(-r[:, 0, 1], r[:, 1, 1]), np.arctan2(r[:, 1, 0], r[:, 0, 0]))
    return np.stack([roll, pitch, yaw], axis=1).astype(np.float32)


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    x, y, z, w = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def quat_to_euler(q: np.ndarray) -> np.ndarray:
    """QUAT2EULER: quaternions [T,4] stored (x, y, z, w) -> float32[T,3] roll, pitch, yaw (R = Rz Ry Rx)."""
    return matrix_to_euler(_quat_to_matrix(np.asarray(q).reshape(-1, 4)))


def euler_to_quat(rpy: np.ndarray) -> np.ndarray:
    """Inverse of QUAT2EULER: [T,3] roll, pitch, yaw -> float32[T,4] (x, y, z, w), w >= 0 not enforced."""
    rpy = np.asarray(rpy, np.float64).reshape(-1, 3)
    cr, cp, cy = (np.cos(rpy[:, i] / 2) for i in range(3))
    sr, sp, sy = (np.sin(rpy[:, i] / 2) for i in range(3))
    return np.stack(
        [
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy,
        ],
        axis=1,
    ).astype(np.float32)


def axis_angle_to_euler(v: np.ndarray) -> np.ndarray:
    """Axis-angle (rotation vector) [T,3] -> float32[T,3] roll, pitch, yaw (R = Rz Ry Rx)."""
    v = np.asarray(v, np.float64).reshape(-1, 3)
    angle = np.linalg.norm(v, axis=1)
    safe = np.where(angle > 1e-12, angle, 1.0)
    axis = v / safe[:, None]
    half = angle / 2
    q = np.concatenate([axis * np.sin(half)[:, None], np.cos(half)[:, None]], axis=1)
    return quat_to_euler(q)


def zero_pad_rot(xyz: np.ndarray) -> np.ndarray:
    """ZERO_PAD_ROT: translation [T,3] -> float32[T,6] with three zero rotation dims appended."""
    xyz = np.asarray(xyz, np.float32)
    return np.concatenate([xyz, np.zeros((xyz.shape[0], 3), np.float32)], axis=1)


def decode_code_points(points: np.ndarray) -> np.ndarray:
    """Language-Table: int32[T, N] Unicode code points -> object[T] of str, cut at the first NUL."""
    out = np.empty(len(points), object)
    for t, row in enumerate(np.asarray(points)):
        nul = np.flatnonzero(row == 0)
        row = row[: nul[0]] if nul.size else row
        out[t] = "".join(chr(int(c)) for c in row)
    return out


def encode_code_points(text: str, length: int = 512) -> np.ndarray:
    """Inverse of decode_code_points for one string: int32[length], zero padded."""
    points = [ord(c) for c in text]
    if len(points) > length or 0 in points:
        raise ValueError(f"instruction must have at most {length} characters and no NUL, got {len(points)}")
    out = np.zeros(length, np.int32)
    out[: len(points)] = points
    return out


def zlib_to_float32(blobs: np.ndarray, size: int) -> np.ndarray:
    """object[T] of zlib-compressed raw float32 bytes -> float32[T, size] (already-decoded floats pass)."""
    if np.asarray(blobs).dtype.kind == "f":
        return np.asarray(blobs, np.float32).reshape(len(blobs), size)
    rows = [np.frombuffer(zlib.decompress(bytes(b)), dtype="<f4") for b in blobs]
    return np.stack(rows).reshape(len(rows), size) if rows else np.zeros((0, size), np.float32)


def float32_to_zlib(values: np.ndarray) -> np.ndarray:
    """Inverse of zlib_to_float32: float32[T, n] -> object[T] of zlib-compressed bytes."""
    values = np.asarray(values, "<f4")
    out = np.empty(len(values), object)
    for t, row in enumerate(values):
        out[t] = zlib.compress(row.tobytes())
    return out


def decode_text(values: np.ndarray) -> np.ndarray:
    """object[T] of UTF-8 bytes (or str) -> object[T] of str; case is kept."""
    out = np.empty(len(values), object)
    for t, v in enumerate(values):
        out[t] = v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)
    return out


def hash_coin(*parts: str, p: float = 0.5) -> bool:
    """Deterministic biased coin: True with probability ``p`` over the hash of ``parts``."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < p


def idle_frame_mask(
    normalized_action: np.ndarray, q01, q99, *, atol: float = 1e-5
) -> np.ndarray:
    """bool[T] keep-mask of OpenVLA's DROID zero-action filter, in its float32 arithmetic.

    ``normalized_action`` float[T, >=d] is the action AFTER BOUNDS_Q99 normalization with the
    dataset's own statistics. A frame is idle (False) when each of its first d = len(q01) dims is
    within ``atol`` of the normalized zero computed from the given (hard-coded) percentiles:
    ``2 * (0 - q01) / (q99 - q01 + 1e-8) - 1`` (float32, no clip). When the dataset's statistics
    differ from those percentiles, zero actions do not normalize to that value and are kept.
    """
    q01 = np.asarray(q01, np.float32)
    q99 = np.asarray(q99, np.float32)
    zero = np.float32(2) * (np.float32(0) - q01) / (q99 - q01 + np.float32(1e-8)) - np.float32(1)
    a = np.asarray(normalized_action, np.float32)[:, : q01.size]
    return np.any(np.abs(a - zero) > np.float32(atol), axis=1)
