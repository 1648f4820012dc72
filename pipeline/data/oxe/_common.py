"""Shared helpers for the dataset modules: feature templates and plan -> raw value builders."""

from __future__ import annotations

import numpy as np

from pipeline.data.oxe import transforms as tf
from pipeline.data.oxe.spec import step

IMG256 = "Image(256,256,3) uint8 jpeg"  # what OpenVLA's pre-processed copy stores
NO_CAMERA = {"secondary": None, "wrist": None}
NO_DEPTH = {"primary": None, "secondary": None, "wrist": None}
NULL_STATE = (None,) * 8
F32 = np.float32


def cams(primary, secondary=None, wrist=None) -> dict:
    """Camera (or depth) slot map."""
    return {"primary": primary, "secondary": secondary, "wrist": wrist}


def ext_rlds(
    action: str,
    observation: dict,
    *,
    episode_metadata: dict | None = None,
    extra_steps: dict | None = None,
    language: str = "Text",
    embedding: bool = True,
    scalar_dtype: str = "float32",
) -> dict:
    """Features of the standard RLDS builder template ("ext_rlds_standard" in the facts file)."""
    steps = {
        "action": action,
        "discount": f"Scalar {scalar_dtype}",
        "is_first": "bool",
        "is_last": "bool",
        "is_terminal": "bool",
        "language_instruction": language,
        "observation": observation,
        "reward": f"Scalar {scalar_dtype}",
        **(extra_steps or {}),
    }
    if embedding:
        steps["language_embedding"] = "Tensor(512,) float32"
    meta = {"file_path": "Text"} if episode_metadata is None else episode_metadata
    return {"episode_metadata": meta, "steps": dict(sorted(steps.items()))}


def rtx(action: dict, observation: dict, *, episode_level: dict | None = None) -> dict:
    """Features of the RT-X-converted layout ("google_rtx_standard"): language inside observation."""
    obs = {
        **observation,
        "natural_language_embedding": "Tensor(512,) float32",
        "natural_language_instruction": "string",
    }
    steps = {
        "action": dict(sorted(action.items())),
        "is_first": "bool",
        "is_last": "bool",
        "is_terminal": "bool",
        "observation": dict(sorted(obs.items())),
        "reward": "Scalar float32",
    }
    return {**(episode_level or {}), "steps": steps}


# ------------------------------------------------------------------ plan helpers (inverse direction)
def plan_action(plan: dict) -> np.ndarray:
    """plan["action"] as float32[T, 7]."""
    return np.asarray(plan["action"], F32).reshape(-1, 7)


def pose6(plan: dict) -> np.ndarray:
    """Planned EEF pose float32[T, 6] = xyz + rpy."""
    return np.concatenate(
        [np.asarray(plan["proprio_xyz"], F32), np.asarray(plan["proprio_rpy"], F32)], axis=1
    )


def pose_quat(plan: dict) -> np.ndarray:
    """Planned EEF pose float32[T, 7] = xyz + quaternion (x, y, z, w)."""
    return np.concatenate(
        [np.asarray(plan["proprio_xyz"], F32), tf.euler_to_quat(plan["proprio_rpy"])], axis=1
    )


def state_grip(plan: dict) -> np.ndarray:
    """Planned observed gripper float32[T, 1] (1 open)."""
    return np.asarray(plan["gripper"], F32).reshape(-1, 1)


def col(x) -> np.ndarray:
    """float32 column [T, 1]."""
    return np.asarray(x, F32).reshape(-1, 1)


def cat(*parts) -> np.ndarray:
    """Concatenate float32 blocks along the feature axis."""
    return np.concatenate([np.asarray(p, F32).reshape(len(p), -1) for p in parts], axis=1)


def zeros(t: int, d: int) -> np.ndarray:
    return np.zeros((t, d), F32)


def noise(rng: np.random.Generator, t: int, d: int, scale: float = 0.1) -> np.ndarray:
    """Filler values for state dims the plan does not describe (joints etc.)."""
    return (rng.standard_normal((t, d)) * scale).astype(F32)


def terminate_flags(t: int) -> np.ndarray:
    """float32[T, 1]: 1 on the last step."""
    out = zeros(t, 1)
    out[-1] = 1.0
    return out


# ------------------------------------------------------------------ RT-X action sub-dict
RTX_MOVE = {
    "rotation_delta": "Tensor(3,) float32",
    "terminate_episode": "Tensor() float32",
    "world_vector": "Tensor(3,) float32",
}


def rtx_move(raw: dict) -> np.ndarray:
    """float32[T, 6] = action/world_vector + action/rotation_delta."""
    return cat(step(raw, "action", "world_vector"), step(raw, "action", "rotation_delta"))


def rtx_move_inverse(a: np.ndarray) -> dict:
    """Inverse of rtx_move: canonical [T, >=6] -> {world_vector, rotation_delta}."""
    return {"world_vector": a[:, :3].copy(), "rotation_delta": a[:, 3:6].copy()}
