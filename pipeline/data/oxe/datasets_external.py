"""oxe_magic_soup_plus datasets in the standard RLDS builder layout (``*_converted_externally_to_rlds``
and similar); shared machinery in ``_ext_layout``.

Losses of ``synthesize_raw_steps -> standardize``: none beyond float32 rounding (quaternion round
trips: ~1e-6); a plan of T steps gives T raw steps.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.oxe import _common as c
from pipeline.data.oxe import _ext_layout as layout
from pipeline.data.oxe import transforms as tf
from pipeline.data.oxe.spec import Std, step

__all__ = ["SPECS"]


# sailor and sirius share one observation layout (same lab, same recording setup)
_AUSTIN_SAILOR_SIRIUS_OBS = {
    **layout.IMG_WRIST,
    "state": "Tensor(8,) float32",
    "state_ee": "Tensor(16,) float32",
    "state_gripper": "Tensor(1,) float32",
    "state_joint": "Tensor(7,) float32",
}

def _first8(obs):
    """state = its first 8 values."""
    return {"state": layout.obs_array(obs)[:, :8]}


def _joints_grip_matrix_inv(plan, rng):  # [7 joints, gripper, 16 EE matrix]
    """Writes observation/state = [7 joints (filler), gripper width, 16 EE matrix (zeros)]."""
    t = len(plan["gripper"])
    return {"state": c.cat(c.noise(rng, t, 7), c.state_grip(plan) * 0.08, c.zeros(t, 16))}


def _hydra_state(obs):
    """eef_state = state[0:3] + state[7:10]; gripper_state = state[24]."""
    s = layout.obs_array(obs)
    return {"eef_state": c.cat(s[:, 0:3], s[:, 7:10]), "gripper_state": s[:, 24]}


def _hydra_state_inv(plan, rng):
    """Writes observation/state (27) = [pos, quat, euler, 14 filler, 3 x gripper]."""
    t = len(plan["gripper"])
    g = c.state_grip(plan)
    return {"state": c.cat(c.pose_quat(plan), plan["proprio_rpy"], c.noise(rng, t, 14), g, g, g)}


def _last6(obs):
    """eef_state = the last 6 state values."""
    return {"eef_state": layout.obs_array(obs)[:, -6:]}


def _furniture_state(obs):
    """state = state[0:7] (pos + quat) + state[-1] (gripper width)."""
    s = layout.obs_array(obs)
    return {"state": c.cat(s[:, :7], s[:, -1])}


def _furniture_state_inv(plan, rng):
    """Writes observation/state (35) = [pos, quat, 27 zeros, gripper width]."""
    t = len(plan["gripper"])
    return {"state": c.cat(c.pose_quat(plan), c.zeros(t, 27), c.state_grip(plan) * 0.08)}


def _joint7(obs):
    """joint_state = state[0:7]."""
    return {"joint_state": layout.obs_array(obs)[:, :7]}


def _iamlab_state(obs):
    """joint_state = state[0:7]; gripper_state = state[7]."""
    s = layout.obs_array(obs)
    return {"joint_state": s[:, :7], "gripper_state": s[:, 7]}


def _stretch_state(obs):
    """eef_state = state[0:3] + three zeros; gripper_state = state[3]."""
    s = layout.obs_array(obs)
    return {"eef_state": c.cat(s[:, :3], c.zeros(len(s), 3)), "gripper_state": s[:, 3]}


def _nyu_franka_state_inv(plan, rng):  # [7 joints, EE xyz, EE rpy]
    """Writes observation/state (13) = [7 joints (filler), EE xyz, EE rpy]."""
    return {"state": c.cat(c.noise(rng, len(plan["gripper"]), 7), c.pose6(plan))}


def _pose_quat_grip_inv(plan, rng):
    """Writes observation/state (8) = [pos, quat, gripper]."""
    return {"state": c.cat(c.pose_quat(plan), c.state_grip(plan))}


def _joints_grip_inv(plan, rng):  # [7 joints, gripper]
    """Writes observation/state (8) = [7 joints (filler), gripper]."""
    return {"state": c.cat(c.noise(rng, len(plan["gripper"]), 7), c.state_grip(plan))}


def _iamlab_state_inv(plan, rng):  # [7 joints, gripper, 6 torques, 6 forces]
    """Writes observation/state (20) = [7 joints (filler), gripper, 12 zeros]."""
    t = len(plan["gripper"])
    return {"state": c.cat(c.noise(rng, t, 7), c.state_grip(plan), c.zeros(t, 12))}


def _stretch_state_inv(plan, rng):
    """Writes observation/state (4) = [xyz, gripper]."""
    return {"state": c.cat(plan["proprio_xyz"], c.state_grip(plan))}


def _fanuc(raw: dict, fix: bool) -> Std:
    """No gripper action stored: dim 6 = INVERT(observed gripper status state[6]) of the SAME step
    (fix: of the NEXT step, the state the command leads to; the last step keeps its own)."""
    s = step(raw, "observation", "state").astype(np.float32)
    status = s[:, 6]
    if fix:
        status = np.concatenate([status[1:], status[-1:]])
    action = c.cat(step(raw, "action"), tf.invert(status))
    return Std(action, {"joint_state": s[:, :6], "gripper_state": s[:, 6]})


def _fanuc_inverse(plan: dict, rng) -> dict:
    """Writes the 6-D action and observation/state with status state[6] = 1 - gripper."""
    a = c.plan_action(plan)
    t = len(a)
    state = c.cat(c.noise(rng, t, 6), 1.0 - a[:, 6], c.noise(rng, t, 6))
    return {"action": a[:, :6].copy(), "observation": {"state": state}}


SPECS = (
    layout.spec(
        "stanford_hydra_dataset_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={**layout.IMG_WRIST, "state": "Tensor(27,) float32"},
        extra_steps={"is_dense": "Scalar bool"},
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.invert_last, layout.invert_last_inv),
        state=(_hydra_state, _hydra_state_inv),
        splits={"train": 570},
        in_magic_soup_plus=True,
        control_hz=10,
    ),
    layout.spec(
        "austin_buds_dataset_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={**layout.IMG_WRIST, "state": "Tensor(24,) float32"},
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=("state",),
        state_encoding="JOINT",
        act=(layout.invert_clip_last, layout.invert_clip_last_inv),
        state=(_first8, _joints_grip_matrix_inv),
        splits={"train": 50},
        in_magic_soup_plus=True,
        control_hz=20,
    ),
    layout.spec(
        "nyu_franka_play_dataset_converted_externally_to_rlds",
        action="Tensor(15,) float32",
        observation={
            "depth": "Tensor(256,256,1) int32",
            "depth_additional_view": "Tensor(256,256,1) int32",
            "image": c.IMG256,
            "image_additional_view": c.IMG256,
            "state": "Tensor(13,) float32",
        },
        cameras=c.cams("image", "image_additional_view"),
        depth=c.cams("depth", "depth_additional_view"),
        state_keys=("eef_state", None, None),
        state_encoding="POS_EULER",
        act=(layout.nyu_franka, layout.nyu_franka_inv),
        state=(_last6, _nyu_franka_state_inv),
        splits={"train": 365, "val": 91},
        in_magic_soup_plus=True,
        control_hz=3,
    ),
    layout.spec(
        "furniture_bench_dataset_converted_externally_to_rlds",
        action="Tensor(8,) float32",
        observation={**layout.IMG_WRIST, "state": "Tensor(35,) float32"},
        episode_metadata={"file_path": "Text", "furniture": "Text", "initial_randomness": "Text"},
        extra_steps={"skill_completion": "Scalar float32"},
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=("state",),
        state_encoding="POS_QUAT",
        act=(layout.furniture, layout.furniture_inv),
        state=(_furniture_state, _furniture_state_inv),
        splits={"train": 5100},
        in_magic_soup_plus=True,
        control_hz=10,
        known_issues=(
            "source dims 3-6 are a 'quaternion velocity' but are converted as an orientation quaternion",
        ),
    ),
    layout.spec(
        "ucsd_kitchen_dataset_converted_externally_to_rlds",
        action="Tensor(8,) float32",
        observation={"image": c.IMG256, "state": "Tensor(21,) float32"},
        cameras=c.cams("image"),
        state_keys=("joint_state", None),
        state_encoding="JOINT",
        act=(layout.first7, layout.first7_inv(8)),
        state=(_joint7, layout.noise_state(21)),
        splits={"train": 150},
        in_magic_soup_plus=True,
        control_hz=2,
        known_issues=("action may be an absolute pose target; gripper polarity unverified (passed through)",),
    ),
    layout.spec(
        "austin_sailor_dataset_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation=_AUSTIN_SAILOR_SIRIUS_OBS,
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=("state",),
        state_encoding="POS_QUAT",
        act=(layout.invert_clip_last, layout.invert_clip_last_inv),
        state=(None, _pose_quat_grip_inv),
        splits={"train": 240},
        in_magic_soup_plus=True,
        control_hz=20,
    ),
    layout.spec(
        "austin_sirius_dataset_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation=_AUSTIN_SAILOR_SIRIUS_OBS,
        extra_steps={"action_mode": "Tensor(1,) float32", "intv_label": "Tensor(1,) float32"},
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=("state",),
        state_encoding="POS_QUAT",
        act=(layout.invert_clip_last, layout.invert_clip_last_inv),
        state=(None, _joints_grip_inv),
        splits={"train": 559},
        in_magic_soup_plus=True,
        control_hz=20,
        known_issues=(
            "proprio labelled POS_QUAT holds 7 joints + gripper; intervention labels are not filtered",
        ),
    ),
    layout.spec(
        "dlr_edan_shared_control_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={"image": c.IMG256, "state": "Tensor(7,) float32"},
        cameras=c.cams("image"),
        state_keys=("state", None),
        state_encoding="POS_EULER",
        act=(layout.invert_last, layout.invert_last_inv),
        state=(None, layout.pose6_grip_inv),
        splits={"train": 104},
        in_magic_soup_plus=True,
        control_hz=5,
        known_issues=(
            "action dims 0-5 may be an absolute EEF pose (scipy 'zxy' Euler), not deltas; not converted",
        ),
    ),
    layout.spec(
        "iamlab_cmu_pickup_insert_converted_externally_to_rlds",
        action="Tensor(8,) float32",
        observation={**layout.IMG_WRIST, "state": "Tensor(20,) float32"},
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=("joint_state", "gripper_state"),
        state_encoding="JOINT",
        act=(layout.quat_mid, layout.quat_mid_inv),
        state=(_iamlab_state, _iamlab_state_inv),
        splits={"train": 631},
        in_magic_soup_plus=True,
        control_hz=20,
        known_issues=("action is an absolute position + orientation target, not a delta; not differenced",),
    ),
    layout.spec(
        "utaustin_mutex",
        action="Tensor(7,) float32",
        observation={**layout.IMG_WRIST, "state": "Tensor(24,) float32"},
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=("state",),
        state_encoding="JOINT",
        act=(layout.invert_clip_last, layout.invert_clip_last_inv),
        state=(_first8, _joints_grip_matrix_inv),
        splits={"train": 1500},
        in_magic_soup_plus=True,
        control_hz=20,
    ),
    layout.spec(
        "berkeley_fanuc_manipulation",
        action="Tensor(6,) float32",
        observation={
            **layout.IMG_WRIST,
            "end_effector_state": "Tensor(7,) float32",
            "state": "Tensor(13,) float32",
        },
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=("joint_state", None, "gripper_state"),
        state_encoding="JOINT",
        act=(None, None),
        transform=_fanuc,
        inverse=_fanuc_inverse,
        splits={"train": 415},
        in_magic_soup_plus=True,
        control_hz=10,
        known_issues=(
            "[fixable] gripper action is the observed gripper status of the SAME step (no command stored);"
            " fix uses the next step's status, i.e. the state the action leads to",
        ),
    ),
    layout.spec(
        "cmu_stretch",
        action="Tensor(8,) float32",
        observation={"image": c.IMG256, "state": "Tensor(4,) float32"},
        cameras=c.cams("image"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.first7, layout.first7_inv(8)),
        state=(_stretch_state, _stretch_state_inv),
        splits={"train": 135},
        in_magic_soup_plus=True,
        control_hz=10,
        known_issues=("gripper passed through; polarity unverified",),
    ),
)
