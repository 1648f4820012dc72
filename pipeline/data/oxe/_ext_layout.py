"""Shared machinery for datasets in the standard RLDS builder layout (ext_rlds_standard).

A transform is ``ext`` bound (with ``partial``) to an action function (source action [T, n] ->
canonical [T, 7]) and a state function (observation dict -> derived state keys); each has a matching
inverse used by ``synthesize_raw_steps`` (plan of T steps -> T raw steps).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from pipeline.data.oxe import _common as c
from pipeline.data.oxe import transforms as tf
from pipeline.data.oxe.spec import DatasetSpec, Std, step

LANG = "steps/language_instruction"
IMG_WRIST = {"image": c.IMG256, "wrist_image": c.IMG256}
EEF_G = ("eef_state", None, "gripper_state")
NATIVE = "Image(480,640,3) uint8 png"


def ext(raw: dict, fix: bool, *, act, state=None) -> Std:
    """Reads steps/action (via ``act``) and steps/observation (via ``state``)."""
    obs = raw["steps"]["observation"]
    return Std(act(step(raw, "action")), state(obs) if state else {})


def ext_inverse(plan: dict, rng: np.random.Generator, *, act, state=None) -> dict:
    """Raw steps/action (``act(a, rng)``) and steps/observation (``state(plan, rng)``) for a plan."""
    out = {"action": act(c.plan_action(plan), rng)}
    if state is not None:
        out["observation"] = state(plan, rng)
    return out


def obs_array(obs: dict, key: str = "state") -> np.ndarray:
    """observation[key] as float32."""
    return np.asarray(obs[key], np.float32)


def first7(a):
    """Action = the first 7 source values (a trailing terminate flag is dropped)."""
    return a[:, :7]


def _first7_inv(a, rng, *, n: int):
    return a.copy() if n == 7 else c.cat(a, c.terminate_flags(len(a)), c.zeros(len(a), n - 8))


def first7_inv(n: int):
    """Inverse of first7 for an n-dim source action (n > 7: terminate flag then zeros appended)."""
    return partial(_first7_inv, n=n)


def invert_clip_last(a):
    """dims 0-5 as stored; dim 6 = INVERT(CLIP01(last value))."""
    return c.cat(a[:, :6], tf.invert(tf.clip01(a[:, 6])))


def invert_clip_last_inv(a, rng):
    return c.cat(a[:, :6], tf.clip01_inverse(1.0 - a[:, 6]))


def invert_last(a):
    """dims 0-5 as stored; dim 6 = INVERT(last value) (no clipping)."""
    return c.cat(a[:, :6], tf.invert(a[:, 6]))


def invert_last_inv(a, rng):
    return c.cat(a[:, :6], 1.0 - a[:, 6])


def quat_mid(a):
    """dims 0-2 = a[0:3]; dims 3-5 = QUAT2EULER(a[3:7]); dim 6 = a[7] unchanged."""
    return c.cat(a[:, :3], tf.quat_to_euler(a[:, 3:7]), a[:, 7])


def quat_mid_inv(a, rng):
    return c.cat(a[:, :3], tf.euler_to_quat(a[:, 3:6]), a[:, 6])


def furniture(a):
    """dims 0-2 = a[0:3]; dims 3-5 = QUAT2EULER(a[3:7]); dim 6 = INVERT(CLIP01(a[7]))."""
    return c.cat(a[:, :3], tf.quat_to_euler(a[:, 3:7]), tf.invert(tf.clip01(a[:, 7])))


def furniture_inv(a, rng):
    return c.cat(a[:, :3], tf.euler_to_quat(a[:, 3:6]), tf.clip01_inverse(1.0 - a[:, 6]))


def nyu_franka(a):
    """dims 0-5 = a[7:13] (EE delta xyz + rpy); dim 6 = CLIP01(a[13])."""
    return c.cat(a[:, 7:13], tf.clip01(a[:, 13]))


def nyu_franka_inv(a, rng):
    t = len(a)
    return c.cat(c.noise(rng, t, 7), a[:, :6], tf.clip01_inverse(a[:, 6]), c.terminate_flags(t))


def pad_rot_last(a):
    """dims 0-2 = a[0:3]; ZERO_PAD_ROT; dim 6 = last value (unconverted)."""
    return c.cat(tf.zero_pad_rot(a[:, :3]), a[:, -1])


def pad_rot_last_inv(a, rng):
    return c.cat(a[:, :3], a[:, 6])


def four_zero_last(a):
    """dims 0-3 = a[0:4] (4th value lands in the roll slot); dims 4-5 = 0; dim 6 = last value."""
    return c.cat(a[:, :4], c.zeros(len(a), 2), a[:, -1])


def four_zero_last_inv(a, rng):
    return c.cat(a[:, :4], a[:, 6])


def last7(a):
    """Right arm only: the last 7 of 14 values."""
    return a[:, -7:]


def last7_inv(a, rng):
    return c.cat(c.noise(rng, len(a), 7), a)


def first6_zero(a):
    """dims 0-5 = a[0:6]; gripper constant 0.0 (gains dropped)."""
    return c.cat(a[:, :6], c.zeros(len(a), 1))


def first6_zero_inv(a, rng):
    return c.cat(a[:, :6], np.abs(c.noise(rng, len(a), 14)))


def pad_to7(a):
    """Zero-pad a short (2- or 3-D) translation action to 7 dims (gripper 0.0)."""
    a = np.asarray(a, np.float32)
    return c.cat(a, c.zeros(len(a), 7 - a.shape[1]))


def _pad_to7_inv(a, rng, *, n: int, dtype):
    return a[:, :n].astype(dtype)


def pad_to7_inv(n: int, dtype=np.float32):
    """Inverse of pad_to7 for an n-dim source action of ``dtype``."""
    return partial(_pad_to7_inv, n=n, dtype=dtype)


def play_fusion(a):
    """First 3 values + the LAST 4 (quaternion parts, gripper and terminate land in dims 3-6)."""
    return c.cat(a[:, :3], a[:, -4:])


def play_fusion_inv(a, rng):
    return c.cat(a[:, :3], c.zeros(len(a), 2), a[:, 3:7])


def eef6_grip(obs, *, g: int = 6):
    """eef_state = state[0:6]; gripper_state = state[g]."""
    s = obs_array(obs)
    return {"eef_state": s[:, :6], "gripper_state": s[:, g]}


def pose6_grip_inv(plan, rng):
    """Writes observation/state (7) = [xyz, rpy, gripper]."""
    return {"state": c.cat(c.pose6(plan), c.state_grip(plan))}


def _noise_state(plan, rng, *, n: int, key: str):
    return {key: c.noise(rng, len(plan["gripper"]), n)}


def noise_state(n: int, key: str = "state"):
    """State inverse filling ``key`` with n filler values (joints etc. the plan does not describe)."""
    return partial(_noise_state, n=n, key=key)


def spec(
    name: str,
    *,
    action: str,
    observation: dict,
    cameras: dict,
    state_keys: tuple,
    state_encoding: str,
    act: tuple,
    state: tuple = (None, None),
    transform=None,
    inverse=None,
    **kw,
) -> DatasetSpec:
    """A standard-layout spec; ``act``/``state`` are (forward, inverse) pairs bound into ext."""
    features_kw = {
        k: kw.pop(k)
        for k in ("episode_metadata", "extra_steps", "language", "embedding", "scalar_dtype")
        if k in kw
    }
    return DatasetSpec(
        name=name,
        version=kw.pop("version", "0.1.0"),
        features=c.ext_rlds(action, observation, **features_kw),
        cameras=cameras,
        depth=kw.pop("depth", c.NO_DEPTH),
        state_keys=state_keys,
        state_encoding=state_encoding,
        action_encoding=kw.pop("action_encoding", "EEF_POS"),
        language_key=kw.pop("language_key", LANG),
        transform=transform or (partial(ext, act=act[0], state=state[0]) if act[0] else None),
        inverse=inverse or (partial(ext_inverse, act=act[1], state=state[1]) if act[1] else None),
        episode_id_keys=kw.pop("episode_id_keys", ("episode_metadata/file_path",)),
        **kw,
    )


SIX_ONE = (partial(eef6_grip, g=6), pose6_grip_inv)
