"""The canonical (standardized) episode: the contract between the data stage and training.

Every OXE dataset is standardized into this one schema before validation, filtering, statistics
and curation. An episode is a plain dict::

    {
      "dataset_name": str,          # registry name, e.g. "bridge_orig"
      "episode_id": str,            # unique within the dataset (source file + index when absent)
      "source_file": str,           # shard URL the episode was read from
      "source_index": int,          # record index inside that shard
      "steps": {                    # every value has the same leading length T (steps)
        "image_primary":   object[T]  encoded JPEG/PNG bytes; b"" = camera missing (padding)
        "image_secondary": object[T]  same
        "image_wrist":     object[T]  same
        "proprio":         float32[T, P]  state keys concatenated in registry order; a null key
                                          inserts one 0.0 (encoding named by the registry entry)
        "action":          float32[T, 7]  dx, dy, dz, droll, dpitch, dyaw, gripper
                                          (gripper absolute: 1.0 = open, 0.0 = closed)
        "language_instruction": object[T] str ("" = unlabeled)
        "is_first", "is_last", "is_terminal": bool[T]
      },
    }

Movement dims are whatever per-step delta the source provides (metres/radians where it says so);
the registry documents each dataset's semantics. Normalization happens later, in the stream.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CAMERA_SLOTS",
    "IMAGE_KEYS",
    "STEP_KEYS",
    "EPISODE_KEYS",
    "ACTION_DIM",
    "GRIPPER_DIM",
    "ACTION_NAMES",
    "validate_episode",
    "num_steps",
]

CAMERA_SLOTS = ("primary", "secondary", "wrist")
IMAGE_KEYS = tuple(f"image_{slot}" for slot in CAMERA_SLOTS)
STEP_KEYS = IMAGE_KEYS + ("proprio", "action", "language_instruction", "is_first", "is_last", "is_terminal")
EPISODE_KEYS = ("dataset_name", "episode_id", "source_file", "source_index", "steps")
ACTION_DIM = 7
GRIPPER_DIM = 6
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")


def num_steps(ep: dict) -> int:
    return int(len(ep["steps"]["action"]))


def validate_episode(ep: dict) -> list[str]:
    """Return the problems found in a canonical episode ([] when it is well formed)."""
    problems = [f"missing episode key '{k}'" for k in EPISODE_KEYS if k not in ep]
    if problems:
        return problems
    steps = ep["steps"]
    problems += [f"missing step key '{k}'" for k in STEP_KEYS if k not in steps]
    if problems:
        return problems
    t = len(steps["action"])
    if t == 0:
        return ["episode has no steps"]
    for key in STEP_KEYS:
        if len(steps[key]) != t:
            problems.append(f"step key '{key}' has length {len(steps[key])}, expected {t}")
    action = np.asarray(steps["action"])
    if action.dtype != np.float32 or action.shape != (t, ACTION_DIM):
        problems.append(f"action must be float32[{t},{ACTION_DIM}], got {action.dtype}{list(action.shape)}")
    proprio = np.asarray(steps["proprio"])
    if proprio.dtype != np.float32 or proprio.ndim != 2:
        problems.append(f"proprio must be float32[T,P], got {proprio.dtype}{list(proprio.shape)}")
    for key in ("action", "proprio"):
        arr = np.asarray(steps[key])
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            problems.append(f"{key} contains NaN or Inf")
    for key in ("is_first", "is_last", "is_terminal"):
        if np.asarray(steps[key]).dtype != np.bool_:
            problems.append(f"{key} must be bool")
    for key in IMAGE_KEYS:
        if not all(isinstance(b, (bytes, np.bytes_)) for b in steps[key]):
            problems.append(f"{key} must hold encoded image bytes")
    if not all(isinstance(s, str) for s in steps["language_instruction"]):
        problems.append("language_instruction must hold str values")
    return problems
