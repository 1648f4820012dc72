"""OXE datasets in the RT-X-converted layout (language inside ``observation``, action sub-dicts).

Losses of ``synthesize_raw_steps -> standardize`` (plan of T steps gives T raw steps unless noted):
- REL2ABS datasets (fractal, kuka, jaco, ur5, nyu_door): the gripper must be binary (0/1); other
  values are thresholded at 0.5.
- toto, bc_z: the gripper is stored as bool / int, so it is thresholded at 0.5 too.
- jaco: no rotation in the source (dims 3-5 = 0); cable routing: no gripper (dim 6 = 0);
  language_table: planar action (dims 2-5 = 0, dim 6 = 1).
"""

from __future__ import annotations

import numpy as np

from pipeline.data.oxe import _common as c
from pipeline.data.oxe import transforms as tf
from pipeline.data.oxe.spec import DatasetSpec, Std, step

__all__ = ["SPECS"]

_LANG = "steps/observation/natural_language_instruction"
_RTX_ACTION = {
    "base_displacement_vector": "Tensor(2,) float32",
    "base_displacement_vertical_rotation": "Tensor(1,) float32",
    "gripper_closedness_action": "Tensor(1,) float32",
    "rotation_delta": "Tensor(3,) float32",
    "terminate_episode": "Tensor(3,) int32",
    "world_vector": "Tensor(3,) float32",
}


# ------------------------------------------------------------------ fractal / kuka
def _fractal(raw: dict, fix: bool) -> Std:
    """Reads action/{world_vector,rotation_delta,gripper_closedness_action}; REL2ABS gripper."""
    grip = tf.rel2abs_gripper(step(raw, "action", "gripper_closedness_action")[:, 0])
    return Std(c.cat(c.rtx_move(raw), grip), {})


def _fractal_inverse(plan: dict, rng) -> dict:
    """Writes action/{world_vector, rotation_delta, gripper_closedness_action (+-1 events)}, observation/{base_pose_tool_reached, gripper_closed}."""
    a = c.plan_action(plan)
    action = {**c.rtx_move_inverse(a), "gripper_closedness_action": c.col(tf.rel2abs_inverse(a[:, 6]))}
    obs = {"base_pose_tool_reached": c.pose_quat(plan), "gripper_closed": 1.0 - c.state_grip(plan)}
    return {"action": action, "observation": obs}


_KUKA_POSE = "clip_function_input/base_pose_tool_reached"


def _kuka(raw: dict, fix: bool) -> Std:
    """As fractal, plus the two zlib-stored state fields decompressed to float32 [T,7] and [T,1]."""
    obs = raw["steps"]["observation"]
    state = {
        _KUKA_POSE: tf.zlib_to_float32(obs[_KUKA_POSE], 7),
        "gripper_closed": tf.zlib_to_float32(obs["gripper_closed"], 1),
    }
    return Std(_fractal(raw, fix).action, state)


def _kuka_inverse(plan: dict, rng) -> dict:
    """As fractal, with the two state fields zlib-compressed and _episode.success = True."""
    out = _fractal_inverse(plan, rng)
    out["observation"] = {k: tf.float32_to_zlib(v) for k, v in out["observation"].items()}
    out["observation"][_KUKA_POSE] = out["observation"].pop("base_pose_tool_reached")
    out["_episode"] = {"success": np.bool_(True)}
    return out


def _kuka_success(raw: dict) -> bool:
    """Episode filter: keep only episodes whose episode-level ``success`` is true."""
    return bool(np.asarray(raw["success"]))


_FRACTAL_OBS = {
    "base_pose_tool_reached": "Tensor(7,) float32",
    "gripper_closed": "Tensor(1,) float32",
    "gripper_closedness_commanded": "Tensor(1,) float32",
    "height_to_bottom": "Tensor(1,) float32",
    "image": c.IMG256,
    "orientation_box": "Tensor(2,3) float32",
    "orientation_start": "Tensor(4,) float32",
    "robot_orientation_positions_box": "Tensor(3,3) float32",
    "rotation_delta_to_go": "Tensor(3,) float32",
    "src_rotation": "Tensor(4,) float32",
    "vector_to_go": "Tensor(3,) float32",
    "workspace_bounds": "Tensor(3,3) float32",
}
_FRACTAL_EPISODE = {
    "aspects": {k: "bool" for k in ("already_success", "feasible", "has_aspects", "success", "undesirable")},
    "attributes": {
        f"{k}{suffix}": dtype
        for k in ("collection_mode", "data_type", "env", "location", "objects_family", "task_family")
        for suffix, dtype in (("", "Tensor() int64"), ("_name", "string"))
    },
}
_KUKA_OBS = {
    _KUKA_POSE: "Tensor(7,) float32 zlib",
    "clip_function_input/workspace_bounds": "Tensor(3,3) float32",
    "gripper_closed": "Tensor(1,) float32 zlib",
    "height_to_bottom": "Tensor(1,) float32",
    "image": c.IMG256,
    "task_id": "Tensor(1,) float32",
}


# ------------------------------------------------------------------ taco / jaco / cable / roboturk
def _taco(raw: dict, fix: bool) -> Std:
    """Reads action/rel_actions_world (CLIP01 gripper) and observation/robot_obs (state slices)."""
    rel = step(raw, "action", "rel_actions_world")
    robot_obs = step(raw, "observation", "robot_obs")
    state = {"state_eef": robot_obs[:, :6], "state_gripper": robot_obs[:, 6 if fix else 7]}
    return Std(c.cat(rel[:, :6], tf.clip01(rel[:, 6])), state)


def _taco_inverse(plan: dict, rng) -> dict:
    """Writes action/rel_actions_world (gripper -1/+1) and observation/robot_obs (pose, width, joints, action)."""
    a = c.plan_action(plan)
    t = len(a)
    robot_obs = c.cat(
        c.pose6(plan), c.state_grip(plan) * 0.08, c.noise(rng, t, 7), 2 * c.state_grip(plan) - 1
    )
    rel = c.cat(a[:, :6], tf.clip01_inverse(a[:, 6]))
    return {"action": {"rel_actions_world": rel}, "observation": {"robot_obs": robot_obs}}


def _jaco(raw: dict, fix: bool) -> Std:
    """world_vector + ZERO_PAD_ROT + REL2ABS(gripper_closedness_action); state from end_effector_cartesian_pos."""
    pos = step(raw, "observation", "end_effector_cartesian_pos")
    grip = tf.rel2abs_gripper(step(raw, "action", "gripper_closedness_action")[:, 0])
    action = c.cat(tf.zero_pad_rot(step(raw, "action", "world_vector")), grip)
    return Std(action, {"state_eef": pos[:, :6], "state_gripper": pos[:, 6]})


def _jaco_inverse(plan: dict, rng) -> dict:
    """Writes action/{world_vector, gripper_closedness_action (+-1 events)}, observation/end_effector_cartesian_pos."""
    a = c.plan_action(plan)
    action = {
        "world_vector": a[:, :3].copy(),
        "gripper_closedness_action": c.col(tf.rel2abs_inverse(a[:, 6])),
    }
    return {"action": action, "observation": {"end_effector_cartesian_pos": c.pose_quat(plan)}}


def _cable(raw: dict, fix: bool) -> Std:
    """world_vector + rotation_delta + constant 0.0 gripper."""
    move = c.rtx_move(raw)
    return Std(c.cat(move, c.zeros(len(move), 1)), {})


def _cable_inverse(plan: dict, rng) -> dict:
    """Writes action/{world_vector, rotation_delta} and filler observation/robot_state."""
    a = c.plan_action(plan)
    return {"action": c.rtx_move_inverse(a), "observation": {"robot_state": c.noise(rng, len(a), 7)}}


def _invert_clip(raw: dict, fix: bool) -> Std:
    """roboturk / viola: world_vector + rotation_delta + INVERT(CLIP01(gripper_closedness_action))."""
    grip = step(raw, "action", "gripper_closedness_action").reshape(-1)
    return Std(c.cat(c.rtx_move(raw), tf.invert(tf.clip01(grip))), {})


def _roboturk_inverse(plan: dict, rng) -> dict:
    """Writes action/{world_vector, rotation_delta, gripper_closedness_action (1 = closed)}."""
    a = c.plan_action(plan)
    grip = tf.clip01_inverse(1.0 - a[:, 6])
    return {"action": {**c.rtx_move_inverse(a), "gripper_closedness_action": c.col(grip)}}


def _viola_inverse(plan: dict, rng) -> dict:
    """Writes action/{world_vector, rotation_delta, gripper_closedness_action (scalar)}, observation joint/gripper states."""
    a = c.plan_action(plan)
    action = {**c.rtx_move_inverse(a), "gripper_closedness_action": tf.clip01_inverse(1.0 - a[:, 6])}
    obs = {"joint_states": c.noise(rng, len(a), 7), "gripper_states": c.state_grip(plan) * 0.08}
    return {"action": action, "observation": obs}


# ------------------------------------------------------------------ ur5 / toto / nyu_door / pusht
def _ur5(raw: dict, fix: bool) -> Std:
    """REL2ABS on the scalar gripper_closedness_action; state = robot_state[6:14]."""
    grip = tf.rel2abs_gripper(step(raw, "action", "gripper_closedness_action"))
    return Std(c.cat(c.rtx_move(raw), grip), {"state": step(raw, "observation", "robot_state")[:, 6:14]})


def _ur5_inverse(plan: dict, rng) -> dict:
    """Writes action/{..., gripper_closedness_action (+-1 events)} and observation/robot_state[6:14] = pose + gripper."""
    a = c.plan_action(plan)
    t = len(a)
    rel = tf.rel2abs_inverse(a[:, 6])
    robot_state = c.cat(c.noise(rng, t, 6), c.pose_quat(plan), 1.0 - c.state_grip(plan), rel)
    action = {**c.rtx_move_inverse(a), "gripper_closedness_action": rel}
    return {"action": action, "observation": {"robot_state": robot_state}}


def _toto(raw: dict, fix: bool) -> Std:
    """world_vector + rotation_delta + float(open_gripper)."""
    return Std(c.cat(c.rtx_move(raw), step(raw, "action", "open_gripper").astype(np.float32)), {})


def _toto_inverse(plan: dict, rng) -> dict:
    """Writes action/{world_vector, rotation_delta, open_gripper (bool)} and filler observation/state."""
    a = c.plan_action(plan)
    action = {**c.rtx_move_inverse(a), "open_gripper": a[:, 6] >= 0.5}
    return {"action": action, "observation": {"state": c.noise(rng, len(a), 7)}}


def _rel2abs_1d(raw: dict, fix: bool) -> Std:
    """nyu_door: world_vector + rotation_delta + REL2ABS(gripper_closedness_action[0])."""
    return _fractal(raw, fix)


def _nyu_door_inverse(plan: dict, rng) -> dict:
    """Writes action/{world_vector, rotation_delta, gripper_closedness_action (+-1 events)}."""
    return {"action": _fractal_inverse(plan, rng)["action"]}


def _pusht(raw: dict, fix: bool) -> Std:
    """world_vector + rotation_delta + raw (relative, unconverted) gripper_closedness_action."""
    return Std(c.cat(c.rtx_move(raw), step(raw, "action", "gripper_closedness_action")), {})


def _pusht_inverse(plan: dict, rng) -> dict:
    """Writes action/{world_vector, rotation_delta, gripper_closedness_action (plan value)}, observation/robot_state."""
    a = c.plan_action(plan)
    action = {**c.rtx_move_inverse(a), "gripper_closedness_action": a[:, 6].copy()}
    return {
        "action": action,
        "observation": {"robot_state": np.asarray(plan["proprio_xyz"], np.float32)[:, :2]},
    }


# ------------------------------------------------------------------ language_table / bc_z
def _language_table(raw: dict, fix: bool) -> Std:
    """2-D action -> dims 0-1; dims 2-5 = 0; gripper constant 1.0 (open)."""
    xy = step(raw, "action")
    t = len(xy)
    return Std(c.cat(xy, c.zeros(t, 4), np.ones((t, 1), np.float32)), {})


def _language_table_inverse(plan: dict, rng) -> dict:
    """Writes the 2-D action and observation/effector_translation (language: code points, added by the spec)."""
    a = c.plan_action(plan)
    obs = {"effector_translation": np.asarray(plan["proprio_xyz"], np.float32)[:, :2].copy()}
    return {"action": a[:, :2].copy(), "observation": obs}


def _bc_z(raw: dict, fix: bool) -> Std:
    """First of the 10 future actions: xyz_residual, axis_angle_residual (raw axis-angle in the rpy
    slots; fix: converted to roll/pitch/yaw), INVERT(target_close)."""
    xyz = step(raw, "action", "future/xyz_residual")[:, :3]
    rot = step(raw, "action", "future/axis_angle_residual")[:, :3]
    rot = tf.axis_angle_to_euler(rot) if fix else rot
    close = step(raw, "action", "future/target_close")[:, 0].astype(np.float32)
    return Std(c.cat(xyz, rot, tf.invert(close)), {})


def _future(x: np.ndarray, horizon: int = 10) -> np.ndarray:
    """[T, d] -> [T, horizon * d]: row t holds x[t], x[t+1], ... (zeros past the end)."""
    t, d = x.shape
    out = np.zeros((t, horizon * d), x.dtype)
    for k in range(horizon):
        out[: max(t - k, 0), k * d : (k + 1) * d] = x[k:]
    return out


def _bc_z_inverse(plan: dict, rng) -> dict:
    """Writes action/future/* (10-step look-ahead windows of the plan) and observation/present/*."""
    a = c.plan_action(plan)
    action = {
        "future/xyz_residual": _future(a[:, :3]),
        "future/axis_angle_residual": _future(a[:, 3:6]),
        "future/target_close": _future((a[:, 6:7] < 0.5).astype(np.int64)),
    }
    obs = {
        "present/xyz": np.asarray(plan["proprio_xyz"], np.float32),
        "present/axis_angle": np.asarray(plan["proprio_rpy"], np.float32),
        "present/sensed_close": 1.0 - c.state_grip(plan),
    }
    return {"action": action, "observation": obs}


# ------------------------------------------------------------------ specs
_REL2ABS = "gripper must be binary (REL2ABS re-derives it from +-1 change events)"

SPECS = (
    DatasetSpec(
        name="fractal20220817_data",
        version="0.1.0",
        features={**_FRACTAL_EPISODE, **c.rtx(_RTX_ACTION, _FRACTAL_OBS)},
        cameras=c.cams("image"),
        depth=c.NO_DEPTH,
        state_keys=("base_pose_tool_reached", "gripper_closed"),
        state_encoding="POS_QUAT",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 87212},
        in_magic_soup_plus=True,
        control_hz=3,
        transform=_fractal,
        inverse=_fractal_inverse,
        synthesis_notes=_REL2ABS,
    ),
    DatasetSpec(
        name="kuka",
        version="0.1.0",
        features={"success": "bool", **c.rtx(_RTX_ACTION, _KUKA_OBS)},
        cameras=c.cams("image"),
        depth=c.NO_DEPTH,
        state_keys=(_KUKA_POSE, "gripper_closed"),
        state_encoding="POS_QUAT",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 580392},
        in_magic_soup_plus=True,
        episode_filters=(("kuka_success", _kuka_success),),
        control_hz=10,
        transform=_kuka,
        inverse=_kuka_inverse,
        synthesis_notes=_REL2ABS + "; state fields are zlib bytes; _episode.success = True",
    ),
    DatasetSpec(
        name="taco_play",
        version="0.1.0",
        features=c.rtx(
            {
                "actions": "Tensor(7,) float32",
                "rel_actions_gripper": "Tensor(7,) float32",
                "rel_actions_world": "Tensor(7,) float32",
                "terminate_episode": "Tensor() float32",
            },
            {
                "depth_gripper": "Tensor(256,256) float32",
                "depth_static": "Tensor(256,256) float32",
                "rgb_gripper": c.IMG256,
                "rgb_static": c.IMG256,
                "robot_obs": "Tensor(15,) float32",
                "structured_language_instruction": "string",
            },
        ),
        cameras=c.cams("rgb_static", None, "rgb_gripper"),
        depth=c.cams("depth_static", None, "depth_gripper"),
        state_keys=("state_eef", None, "state_gripper"),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 3242, "test": 361},
        in_magic_soup_plus=True,
        control_hz=15,
        known_issues=(
            "[fixable] proprio gripper reads robot_obs[7] (first joint) instead of robot_obs[6] (gripper width)",
            "gripper is CLIP01 without inversion: correct only if +1 means open (CALVIN); sign unverified",
        ),
        transform=_taco,
        inverse=_taco_inverse,
    ),
    DatasetSpec(
        name="jaco_play",
        version="0.1.0",
        features=c.rtx(
            {
                "gripper_closedness_action": "Tensor(1,) float32",
                "terminate_episode": "Tensor(3,) int32",
                "world_vector": "Tensor(3,) float32",
            },
            {
                "end_effector_cartesian_pos": "Tensor(7,) float32",
                "end_effector_cartesian_velocity": "Tensor(6,) float32",
                "image": c.IMG256,
                "image_wrist": c.IMG256,
                "joint_pos": "Tensor(8,) float32",
            },
        ),
        cameras=c.cams("image", None, "image_wrist"),
        depth=c.NO_DEPTH,
        state_keys=("state_eef", None, "state_gripper"),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 976, "test": 109},
        in_magic_soup_plus=True,
        control_hz=10,
        known_issues=(
            "state slices end_effector_cartesian_pos[0:6]/[6]; if it is xyz+quaternion this mixes quaternion parts",
        ),
        transform=_jaco,
        inverse=_jaco_inverse,
        constant_action_dims={3: 0.0, 4: 0.0, 5: 0.0},
        synthesis_notes=_REL2ABS + "; no rotation in the source (dims 3-5 = 0)",
    ),
    DatasetSpec(
        name="berkeley_cable_routing",
        version="0.1.0",
        features=c.rtx(
            c.RTX_MOVE,
            {
                "image": c.IMG256,
                "robot_state": "Tensor(7,) float32",
                "top_image": c.IMG256,
                "wrist225_image": c.IMG256,
                "wrist45_image": c.IMG256,
            },
        ),
        cameras=c.cams("image", "top_image", "wrist45_image"),
        depth=c.NO_DEPTH,
        state_keys=("robot_state", None),
        state_encoding="JOINT",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 1482, "test": 165},
        in_magic_soup_plus=True,
        control_hz=10,
        known_issues=("actions are velocities; no gripper action stored (constant 0.0)",),
        transform=_cable,
        inverse=_cable_inverse,
        constant_action_dims={6: 0.0},
        synthesis_notes="no gripper in the source (dim 6 = 0)",
    ),
    DatasetSpec(
        name="roboturk",
        version="0.1.0",
        features=c.rtx(
            {**c.RTX_MOVE, "gripper_closedness_action": "Tensor(1,) float32"}, {"front_rgb": c.IMG256}
        ),
        cameras=c.cams("front_rgb"),
        depth=c.NO_DEPTH,
        state_keys=c.NULL_STATE,
        state_encoding="NONE",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 1796, "test": 199},
        in_magic_soup_plus=True,
        control_hz=10,
        transform=_invert_clip,
        inverse=_roboturk_inverse,
    ),
    DatasetSpec(
        name="viola",
        version="0.1.0",
        features=c.rtx(
            {**c.RTX_MOVE, "gripper_closedness_action": "Tensor() float32"},
            {
                "agentview_rgb": c.IMG256,
                "ee_states": "Tensor(16,) float32",
                "eye_in_hand_rgb": c.IMG256,
                "gripper_states": "Tensor(1,) float32",
                "joint_states": "Tensor(7,) float32",
            },
        ),
        cameras=c.cams("agentview_rgb", None, "eye_in_hand_rgb"),
        depth=c.NO_DEPTH,
        state_keys=("joint_states", "gripper_states"),
        state_encoding="JOINT",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 135, "test": 15},
        in_magic_soup_plus=True,
        control_hz=20,
        transform=_invert_clip,
        inverse=_viola_inverse,
    ),
    DatasetSpec(
        name="berkeley_autolab_ur5",
        version="0.1.0",
        features=c.rtx(
            {**c.RTX_MOVE, "gripper_closedness_action": "Tensor() float32"},
            {
                "hand_image": c.IMG256,
                "image": c.IMG256,
                "image_with_depth": "Image(256,256,1) float32 png",
                "robot_state": "Tensor(15,) float32",
            },
        ),
        cameras=c.cams("image", None, "hand_image"),
        depth=c.cams("depth"),
        state_keys=("state",),
        state_encoding="POS_QUAT",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 896, "test": 104},
        in_magic_soup_plus=True,
        control_hz=5,
        known_issues=(
            "depth slot 'depth' is image_with_depth renamed (depth is not carried by the canonical episode)",
        ),
        transform=_ur5,
        inverse=_ur5_inverse,
        synthesis_notes=_REL2ABS,
    ),
    DatasetSpec(
        name="toto",
        version="0.1.0",
        features=c.rtx(
            {**c.RTX_MOVE, "open_gripper": "bool"}, {"image": c.IMG256, "state": "Tensor(7,) float32"}
        ),
        cameras=c.cams("image"),
        depth=c.NO_DEPTH,
        state_keys=("state", None),
        state_encoding="JOINT",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 902, "test": 101},
        in_magic_soup_plus=True,
        control_hz=30,
        transform=_toto,
        inverse=_toto_inverse,
        synthesis_notes="gripper stored as bool (thresholded at 0.5)",
    ),
    DatasetSpec(
        name="language_table",
        version="0.1.0",
        features={
            "episode_id": "string",
            "steps": {
                "action": "Tensor(2,) float32",
                "is_first": "bool",
                "is_last": "bool",
                "is_terminal": "bool",
                "observation": {
                    "effector_target_translation": "Tensor(2,) float32",
                    "effector_translation": "Tensor(2,) float32",
                    "instruction": "Tensor(512,) int32",
                    "rgb": c.IMG256,
                },
                "reward": "Scalar float32",
            },
        },
        cameras=c.cams("rgb"),
        depth=c.NO_DEPTH,
        state_keys=("effector_translation",) + (None,) * 6,
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key="steps/observation/instruction",
        splits={"train": 442226},
        in_magic_soup_plus=True,
        control_hz=10,
        known_issues=(
            "gripper column is constant 1.0 (open); the constant-dims normalization rule later turns it into 0.0",
        ),
        transform=_language_table,
        inverse=_language_table_inverse,
        episode_id_keys=("episode_id",),
        constant_action_dims={2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0, 6: 1.0},
        synthesis_notes="planar action: dims 2-5 = 0, gripper = 1",
    ),
    DatasetSpec(
        name="bc_z",
        version="0.1.0",
        features=c.rtx(
            {
                "future/axis_angle_residual": "Tensor(30,) float32",
                "future/target_close": "Tensor(10,) int64",
                "future/xyz_residual": "Tensor(30,) float32",
            },
            {
                "episode_success": "Tensor() float32",
                "image": c.IMG256,
                "present/autonomous": "Tensor() int64",
                "present/axis_angle": "Tensor(3,) float32",
                "present/intervention": "Tensor() int64",
                "present/sensed_close": "Tensor(1,) float32",
                "present/xyz": "Tensor(3,) float32",
                "sequence_length": "Tensor() int64",
            },
        ),
        cameras=c.cams("image"),
        depth=c.NO_DEPTH,
        state_keys=("present/xyz", "present/axis_angle", None, "present/sensed_close"),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 39350, "val": 3914},
        in_magic_soup_plus=True,
        control_hz=10,
        known_issues=(
            "[fixable] rotation dims hold an axis-angle delta placed in the roll/pitch/yaw slots without conversion",
            "proprio is labelled POS_EULER but holds axis-angle; episode_success is not filtered",
        ),
        transform=_bc_z,
        inverse=_bc_z_inverse,
        synthesis_notes="gripper stored as int target_close (thresholded at 0.5)",
    ),
    # ---------------- brief entries (not in oxe_magic_soup_plus)
    DatasetSpec(
        name="nyu_door_opening_surprising_effectiveness",
        version="0.1.0",
        features=c.rtx(
            {**c.RTX_MOVE, "gripper_closedness_action": "Tensor(1,) float32"},
            {"image": "Image(720,960,3) uint8 unspecified"},
        ),
        cameras=c.cams(None, None, "image"),
        depth=c.NO_DEPTH,
        state_keys=c.NULL_STATE,
        state_encoding="NONE",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 435, "test": 49},
        control_hz=3,
        known_issues=("primary camera slot is null (wrist-only dataset: OpenVLA would see black images)",),
        transform=_rel2abs_1d,
        inverse=_nyu_door_inverse,
        synthesis_notes=_REL2ABS,
    ),
    DatasetSpec(
        name="columbia_cairlab_pusht_real",
        version="0.1.0",
        features=c.rtx(
            {**c.RTX_MOVE, "gripper_closedness_action": "Tensor() float32"},
            {
                "image": "Image(240,320,3) uint8 unspecified",
                "robot_state": "Tensor(2,) float32",
                "wrist_image": "Image(240,320,3) uint8 unspecified",
            },
        ),
        cameras=c.cams("image", None, "wrist_image"),
        depth=c.NO_DEPTH,
        state_keys=("robot_state",) + (None,) * 6,
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key=_LANG,
        splits={"train": 122, "test": 14},
        control_hz=10,
        known_issues=("gripper stays the raw relative -1/0/+1 command (not converted)",),
        transform=_pusht,
        inverse=_pusht_inverse,
    ),
)
