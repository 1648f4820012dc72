"""Other EEF_POS (and two JOINT_POS) datasets with an OpenVLA config, standard RLDS layout (brief
facts; not in oxe_magic_soup_plus).

Losses of ``synthesize_raw_steps -> standardize`` (T raw steps per plan of T): translation-only
sources (stanford_kuka_multimodal, ucsd_pick_and_place: dims 3-5 = 0; robo_net, stanford_mask_vit:
dims 4-5 = 0), kaist (gripper 0), GNM navigation sets (dims 2-6 = 0), uiuc_d3field (dims 3-6 = 0).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from pipeline.data.oxe import _common as c
from pipeline.data.oxe import _ext_layout as layout
from pipeline.data.oxe.spec import DatasetSpec, Std, step

__all__ = ["SPECS"]


def _four_state(obs, key="state", g=-1):
    """eef_state = <key>[0:4] + two zeros; gripper_state = <key>[g]."""
    s = layout.obs_array(obs, key)
    return {"eef_state": c.cat(s[:, :4], c.zeros(len(s), 2)), "gripper_state": s[:, g]}


def _xyz_yaw_grip(plan):
    return c.cat(plan["proprio_xyz"], np.asarray(plan["proprio_rpy"])[:, 2], c.state_grip(plan))


def _gnm_state(obs):
    """state = position (2) + three zeros + yaw (1)."""
    pos = layout.obs_array(obs, "position")
    return {"state": c.cat(pos, c.zeros(len(pos), 3), layout.obs_array(obs, "yaw"))}


def _gnm_state_inv(plan, rng):
    xyz = np.asarray(plan["proprio_xyz"], np.float64)
    yaw = np.asarray(plan["proprio_rpy"], np.float64)[:, 2:3]
    return {"position": xyz[:, :2].copy(), "yaw": yaw.copy()}


def _pose_quat_inv(plan, rng):
    return {"state": c.pose_quat(plan)}


def _kuka_mm_state_inv(plan, rng):
    quat = c.pose_quat(plan)
    return {"ee_position": quat[:, :3].copy(), "ee_orientation": quat[:, 3:].copy()}


def _maniskill_state(obs):
    """gripper_state = state[7] (one finger position)."""
    return {"gripper_state": layout.obs_array(obs)[:, 7]}


def _maniskill_state_inv(plan, rng):
    t = len(plan["gripper"])
    return {
        "tcp_pose": c.pose_quat(plan),
        "state": c.cat(c.noise(rng, t, 7), c.state_grip(plan) * 0.04, c.zeros(t, 10)),
    }


def _asu(raw: dict, fix: bool) -> Std:
    """Action unchanged; eef_state = STEP-level ground_truth_states/EE; gripper_state = state[-1]."""
    ee = step(raw, "ground_truth_states", "EE")
    grip = step(raw, "observation", "state")[:, -1]
    return Std(step(raw, "action"), {"eef_state": ee, "gripper_state": grip})


def _asu_inverse(plan: dict, rng) -> dict:
    a = c.plan_action(plan)
    state = c.cat(c.noise(rng, len(a), 6), c.state_grip(plan))
    return {"action": a.copy(), "ground_truth_states": {"EE": c.pose6(plan)}, "observation": {"state": state}}


def _play_fusion_t(raw: dict, fix: bool) -> Std:
    """Default: first 3 + last 4 source values; fix: the catalog layout (pos, QUAT2EULER(quat), gripper)."""
    a = step(raw, "action")
    return Std(layout.quat_mid(a[:, :8]) if fix else layout.play_fusion(a), {})


def _grip_only_inv(plan, rng):
    return {"state": c.state_grip(plan)}


def _pose6_inv(plan, rng):
    return {"state": c.pose6(plan)}


def _pose6_noise6_inv(plan, rng):
    return {"state": c.cat(c.pose6(plan), c.noise(rng, len(plan["gripper"]), 6))}


def _first6(obs):
    """state = its first 6 values."""
    return {"state": layout.obs_array(obs)[:, :6]}


def _last7_state(obs):
    """state = its last 7 values (EE pose xyz + quaternion)."""
    return {"state": layout.obs_array(obs)[:, -7:]}


def _kaist_state_inv(plan, rng):
    return {"state": c.cat(c.noise(rng, len(plan["gripper"]), 14), c.pose_quat(plan))}


def _lsmo_state(obs):
    """eef_state = state[0:6]; gripper_state = state[-1]."""
    return layout.eef6_grip(obs, g=-1)


def _lsmo_state_inv(plan, rng):
    return {"state": c.cat(c.pose6(plan), c.noise(rng, len(plan["gripper"]), 6), c.state_grip(plan))}


def _xyz_yaw_grip_to(plan, rng, *, key: str):
    return {key: _xyz_yaw_grip(plan)}


def _xyz_yaw_grip_inv(key: str):
    return partial(_xyz_yaw_grip_to, key=key)


def _end_effector_pose_inv(plan, rng):
    return {"end_effector_pose": c.pose6(plan)}


def _pose_r_inv(plan, rng):
    return {"pose_r": c.pose6(plan)}


def _pr2(name: str, splits: dict) -> DatasetSpec:
    return layout.spec(
        name,
        action="Tensor(8,) float32",
        observation={"image": "Image(128,128,3) uint8 png", "state": "Tensor(7,) float32"},
        cameras=c.cams("image"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.first7, layout.first7_inv(8)),
        state=layout.SIX_ONE,
        splits=splits,
        control_hz=10,
    )


def _gnm(name: str, image: str, splits: dict, hz: float) -> DatasetSpec:
    f64 = "Tensor({},) float64".format
    return layout.spec(
        name,
        action=f64(2),
        observation={"image": image, "position": f64(2), "state": f64(3), "yaw": f64(1)},
        extra_steps={"action_angle": f64(3)},
        scalar_dtype="float64",
        cameras=c.cams(None, None, "image"),
        state_keys=("state", None, None),
        state_encoding="POS_EULER",
        act=(layout.pad_to7, layout.pad_to7_inv(2, np.float64)),
        state=(_gnm_state, _gnm_state_inv),
        splits=splits,
        control_hz=hz,
        constant_action_dims={i: 0.0 for i in range(2, 7)},
        known_issues=(
            "navigation data: 2-D position action, gripper constant 0; primary camera slot is null",
        ),
    )


SPECS = (
    layout.spec(
        "stanford_kuka_multimodal_dataset_converted_externally_to_rlds",
        action="Tensor(4,) float32",
        observation={
            "contact": "Tensor(50,) float32",
            "depth_image": "Tensor(128,128,1) float32",
            "ee_forces_continuous": "Tensor(50,6) float32",
            "ee_orientation": "Tensor(4,) float32",
            "ee_orientation_vel": "Tensor(3,) float32",
            "ee_position": "Tensor(3,) float32",
            "ee_vel": "Tensor(3,) float32",
            "ee_yaw": "Tensor(4,) float32",
            "ee_yaw_delta": "Tensor(4,) float32",
            "image": "Image(128,128,3) uint8 png",
            "joint_pos": "Tensor(7,) float32",
            "joint_vel": "Tensor(7,) float32",
            "optical_flow": "Tensor(128,128,2) float32",
            "state": "Tensor(8,) float32",
        },
        episode_metadata={},
        cameras=c.cams("image"),
        depth=c.cams("depth_image"),
        state_keys=("ee_position", "ee_orientation", None),
        state_encoding="POS_QUAT",
        act=(layout.pad_rot_last, layout.pad_rot_last_inv),
        state=(None, _kuka_mm_state_inv),
        splits={"train": 3000},
        control_hz=20,
        constant_action_dims={3: 0.0, 4: 0.0, 5: 0.0},
        episode_id_keys=(),
    ),
    layout.spec(
        "nyu_rot_dataset_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={"image": "Image(84,84,3) uint8 png", "state": "Tensor(7,) float32"},
        cameras=c.cams("image"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.first7, layout.first7_inv(7)),
        state=layout.SIX_ONE,
        splits={"train": 14},
        control_hz=3,
        known_issues=("gripper not inverted although the source uses 1 = closed",),
    ),
    layout.spec(
        "maniskill_dataset_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={
            "base_pose": "Tensor(7,) float32",
            "depth": "Image(256,256,1) uint16 png",
            "image": "Image(256,256,3) uint8 png",
            "main_camera_cam2world_gl": "Tensor(4,4) float32",
            "main_camera_extrinsic_cv": "Tensor(4,4) float32",
            "main_camera_intrinsic_cv": "Tensor(3,3) float32",
            "state": "Tensor(18,) float32",
            "target_object_or_part_final_pose": "Tensor(7,) float32",
            "target_object_or_part_final_pose_valid": "Tensor(7,) uint8",
            "target_object_or_part_initial_pose": "Tensor(7,) float32",
            "target_object_or_part_initial_pose_valid": "Tensor(7,) uint8",
            "tcp_pose": "Tensor(7,) float32",
            "wrist_camera_cam2world_gl": "Tensor(4,4) float32",
            "wrist_camera_extrinsic_cv": "Tensor(4,4) float32",
            "wrist_camera_intrinsic_cv": "Tensor(3,3) float32",
            "wrist_depth": "Image(256,256,1) uint16 png",
            "wrist_image": "Image(256,256,3) uint8 png",
        },
        episode_metadata={"episode_id": "Text", "file_path": "Text"},
        cameras=c.cams("image", None, "wrist_image"),
        depth=c.cams("depth", None, "wrist_depth"),
        state_keys=("tcp_pose", "gripper_state"),
        state_encoding="POS_QUAT",
        act=(layout.first7, layout.first7_inv(7)),
        state=(_maniskill_state, _maniskill_state_inv),
        splits={"train": 30213},
        control_hz=20,
        known_issues=("gripper stays -1/+1 and rotation is axis-angle (unconverted)",),
        episode_id_keys=("episode_metadata/episode_id", "episode_metadata/file_path"),
    ),
    layout.spec(
        "cmu_franka_exploration_dataset_converted_externally_to_rlds",
        action="Tensor(8,) float32",
        observation={"highres_image": layout.NATIVE, "image": "Image(64,64,3) uint8 png"},
        extra_steps={"structured_action": "Tensor(8,) float32"},
        cameras=c.cams("highres_image"),
        state_keys=c.NULL_STATE,
        state_encoding="NONE",
        act=(layout.first7, layout.first7_inv(8)),
        splits={"train": 199},
        control_hz=10,
    ),
    layout.spec(
        "ucsd_pick_and_place_dataset_converted_externally_to_rlds",
        action="Tensor(4,) float32",
        observation={"image": "Image(224,224,3) uint8 png", "state": "Tensor(7,) float32"},
        episode_metadata={
            "disclaimer": "Text",
            "file_path": "Text",
            "n_transitions": "Scalar int32",
            "success": "Scalar bool",
            "success_labeled_by": "Text",
        },
        cameras=c.cams("image"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.pad_rot_last, layout.pad_rot_last_inv),
        state=layout.SIX_ONE,
        splits={"train": 1355},
        control_hz=3,
        constant_action_dims={3: 0.0, 4: 0.0, 5: 0.0},
        known_issues=("actions are velocities; gripper is an unconverted torque",),
    ),
    _pr2("utokyo_pr2_opening_fridge_converted_externally_to_rlds", {"train": 64, "val": 16}),
    _pr2("utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds", {"train": 192, "val": 48}),
    layout.spec(
        "utokyo_xarm_pick_and_place_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={
            "end_effector_pose": "Tensor(6,) float32",
            "hand_image": "Image(224,224,3) uint8 png",
            "image": "Image(224,224,3) uint8 png",
            "image2": "Image(224,224,3) uint8 png",
            "joint_state": "Tensor(14,) float32",
            "joint_trajectory": "Tensor(21,) float32",
        },
        cameras=c.cams("image", "image2", "hand_image"),
        state_keys=("end_effector_pose", None, None),
        state_encoding="POS_EULER",
        act=(layout.first7, layout.first7_inv(7)),
        state=(None, _end_effector_pose_inv),
        splits={"train": 92, "val": 10},
        control_hz=10,
        known_issues=("action appears to be an absolute pose; used as stored",),
    ),
    layout.spec(
        "utokyo_xarm_bimanual_converted_externally_to_rlds",
        action="Tensor(14,) float32",
        observation={
            "action_l": "Tensor(7,) float32",
            "action_r": "Tensor(7,) float32",
            "image": "Image(256,256,3) uint8 png",
            "pose_l": "Tensor(6,) float32",
            "pose_r": "Tensor(6,) float32",
        },
        cameras=c.cams("image"),
        state_keys=("pose_r", None, None),
        state_encoding="POS_EULER",
        act=(layout.last7, layout.last7_inv),
        state=(None, _pose_r_inv),
        splits={"train": 64, "val": 6},
        control_hz=10,
    ),
    layout.spec(
        "robo_net",
        action="Tensor(5,) float32",
        observation={k: "Image(240,320,3) uint8 jpeg" for k in ("image", "image1", "image2")}
        | {"state": "Tensor(5,) float32"},
        cameras=c.cams("image", "image1"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.four_zero_last, layout.four_zero_last_inv),
        state=(_four_state, _xyz_yaw_grip_inv("state")),
        splits={"train": 82775},
        control_hz=1,
        constant_action_dims={4: 0.0, 5: 0.0},
        known_issues=("4th action value (yaw?) lands in the roll slot; action/state layout inferred",),
    ),
    layout.spec(
        "berkeley_mvp_converted_externally_to_rlds",
        action="Tensor(8,) float32",
        observation={
            "gripper": "Scalar bool",
            "hand_image": layout.NATIVE,
            "joint_pos": "Tensor(7,) float32",
            "pose": "Tensor(7,) float32",
        },
        cameras=c.cams(None, None, "hand_image"),
        state_keys=("pose", "gripper"),
        state_encoding="POS_QUAT",
        action_encoding="JOINT_POS",
        act=(None, None),
        transform=None,
        inverse=None,
        splits={"train": 480},
        control_hz=5,
    ),
    layout.spec(
        "berkeley_rpt_converted_externally_to_rlds",
        action="Tensor(8,) float32",
        observation={
            "gripper": "Scalar bool",
            "hand_image": layout.NATIVE,
            "joint_pos": "Tensor(7,) float32",
        },
        cameras=c.cams(None, None, "hand_image"),
        state_keys=("joint_pos", "gripper"),
        state_encoding="JOINT",
        action_encoding="JOINT_POS",
        act=(None, None),
        transform=None,
        inverse=None,
        splits={"train": 908},
        control_hz=30,
    ),
    layout.spec(
        "kaist_nonprehensile_converted_externally_to_rlds",
        action="Tensor(20,) float32",
        observation={
            "image": layout.NATIVE,
            "partial_pointcloud": "Tensor(512,3) float32",
            "state": "Tensor(21,) float32",
        },
        cameras=c.cams("image"),
        state_keys=("state", None),
        state_encoding="POS_QUAT",
        act=(layout.first6_zero, layout.first6_zero_inv),
        state=(_last7_state, _kaist_state_inv),
        splits={"train": 201},
        control_hz=10,
        constant_action_dims={6: 0.0},
        known_issues=("rotation dims hold an axis-angle residual; no gripper (constant 0)",),
    ),
    layout.spec(
        "stanford_mask_vit_converted_externally_to_rlds",
        action="Tensor(5,) float32",
        observation={
            "end_effector_pose": "Tensor(5,) float32",
            "finger_sensors": "Tensor(1,) float32",
            "high_bound": "Tensor(5,) float32",
            "image": "Image(480,480,3) uint8 png",
            "low_bound": "Tensor(5,) float32",
            "state": "Tensor(15,) float32",
        },
        cameras=c.cams("image"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.four_zero_last, layout.four_zero_last_inv),
        state=(partial(_four_state, key="end_effector_pose", g=4), _xyz_yaw_grip_inv("end_effector_pose")),
        splits={"train": 9109, "val": 91},
        constant_action_dims={4: 0.0, 5: 0.0},
        known_issues=("yaw lands in the roll slot; gripper -1/+1 unconverted",),
    ),
    layout.spec(
        "tokyo_u_lsmo_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={"image": "Image(120,120,3) uint8 png", "state": "Tensor(13,) float32"},
        cameras=c.cams("image"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.first7, layout.first7_inv(7)),
        state=(_lsmo_state, _lsmo_state_inv),
        splits={"train": 50},
        control_hz=10,
    ),
    layout.spec(
        "dlr_sara_pour_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={"image": layout.NATIVE, "state": "Tensor(6,) float32"},
        cameras=c.cams("image"),
        state_keys=("state", None, None),
        state_encoding="POS_EULER",
        act=(layout.first7, layout.first7_inv(7)),
        state=(None, _pose6_inv),
        splits={"train": 100},
        control_hz=10,
    ),
    layout.spec(
        "dlr_sara_grid_clamp_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={"image": layout.NATIVE, "state": "Tensor(12,) float32"},
        cameras=c.cams("image"),
        state_keys=("state", None, None),
        state_encoding="POS_EULER",
        act=(layout.first7, layout.first7_inv(7)),
        state=(_first6, _pose6_noise6_inv),
        splits={"train": 107},
        control_hz=10,
    ),
    layout.spec(
        "asu_table_top_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={
            "image": "Image(224,224,3) uint8 png",
            "state": "Tensor(7,) float32",
            "state_vel": "Tensor(7,) float32",
        },
        extra_steps={
            "action_delta": "Tensor(7,) float32",
            "action_inst": "Text",
            "goal_object": "Text",
            "ground_truth_states": {
                k: "Tensor(6,) float32" for k in ("EE", "bottle", "bread", "coke", "cube", "milk", "pepsi")
            },
        },
        cameras=c.cams("image"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(None, None),
        transform=_asu,
        inverse=_asu_inverse,
        splits={"train": 110},
        control_hz=12.5,
    ),
    layout.spec(
        "stanford_robocook_converted_externally_to_rlds",
        action="Tensor(7,) float32",
        observation={
            **{f"depth_{i}": "Tensor(256,256) float32" for i in range(1, 5)},
            **{f"image_{i}": "Image(256,256,3) uint8 jpeg" for i in range(1, 5)},
            "state": "Tensor(7,) float32",
        },
        episode_metadata={
            **{f"extrinsics_{i}": "Tensor(4,4) float32" for i in range(1, 5)},
            "file_path": "Text",
        },
        cameras=c.cams("image_1", "image_2"),
        depth=c.cams("depth_1", "depth_2"),
        state_keys=layout.EEF_G,
        state_encoding="POS_EULER",
        act=(layout.first7, layout.first7_inv(7)),
        state=layout.SIX_ONE,
        splits={"train": 2460},
        control_hz=5,
        known_issues=("actions are velocities",),
    ),
    layout.spec(
        "imperialcollege_sawyer_wrist_cam",
        action="Tensor(8,) float32",
        observation={
            "image": "Image(64,64,3) uint8 png",
            "state": "Tensor(1,) float32",
            "wrist_image": "Image(64,64,3) uint8 png",
        },
        cameras=c.cams("image", None, "wrist_image"),
        state_keys=(None,) * 7 + ("state",),
        state_encoding="NONE",
        act=(layout.first7, layout.first7_inv(8)),
        state=(None, _grip_only_inv),
        splits={"train": 170},
        control_hz=10,
    ),
    layout.spec(
        "uiuc_d3field",
        action="Tensor(3,) float32",
        observation={
            **{f"depth_{i}": "Image(360,640,1) uint16 png" for i in range(1, 5)},
            **{f"image_{i}": "Image(360,640,3) uint8 png" for i in range(1, 5)},
            "state": "Tensor(4,4) float32",
        },
        cameras=c.cams("image_1", "image_2"),
        depth=c.cams("depth_1", "depth_2"),
        state_keys=c.NULL_STATE,
        state_encoding="NONE",
        act=(layout.pad_to7, layout.pad_to7_inv(3)),
        splits={"train": 192},
        control_hz=1,
        constant_action_dims={i: 0.0 for i in range(3, 7)},
        known_issues=("raw data reported broken (commented out of OpenVLA's magic soup)",),
    ),
    layout.spec(
        "cmu_playing_with_food",
        version="1.0.0",
        action="Tensor(8,) float32",
        observation={
            "finger_vision_1": layout.NATIVE,
            "finger_vision_2": layout.NATIVE,
            "image": layout.NATIVE,
            "state": "Tensor(7,) float32",
        },
        cameras=c.cams("image", None, "finger_vision_1"),
        state_keys=("state", None, None),
        state_encoding="POS_EULER",
        state_size=9,
        act=(layout.quat_mid, layout.quat_mid_inv),
        state=(None, _pose_quat_inv),
        splits={"train": 4200},
        control_hz=10,
        known_issues=("observation/state shape unverified (assumed 7 -> proprio 9); action layout inferred",),
    ),
    layout.spec(
        "cmu_play_fusion",
        action="Tensor(9,) float32",
        observation={"image": "Image(128,128,3) uint8 png", "state": "Tensor(8,) float32"},
        cameras=c.cams("image"),
        state_keys=("state",),
        state_encoding="JOINT",
        act=(None, layout.play_fusion_inv),
        transform=_play_fusion_t,
        splits={"train": 576},
        control_hz=5,
        known_issues=(
            "[fixable] action = first 3 + LAST 4 source values: quaternion parts in dims 3-4, gripper in dim 5 and"
            " the terminate flag in the gripper slot; fix uses pos + QUAT2EULER(quat) + gripper",
        ),
    ),
    _gnm("berkeley_gnm_recon", "Image(120,160,3) uint8 png", {"train": 11834}, 3),
    _gnm("berkeley_gnm_cory_hall", "Image(64,85,3) uint8 png", {"train": 7331}, 5),
    _gnm("berkeley_gnm_sac_son", "Image(120,160,3) uint8 png", {"train": 2955}, 10),
)
