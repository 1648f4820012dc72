"""OXE datasets with their own layouts: Bridge V2 (Berkeley release and the outdated OXE copy), DROID, FMB, Dobb-E, and the
fine-tuning sets (LIBERO, T-DROID, DROID-wipe), plus RoboSet (joint actions, registered only).

Losses of ``synthesize_raw_steps -> standardize``:
- bridge_orig, bridge_oxe: a plan of T steps gives T + 2 raw steps (leading all-zero step and a trailing step
  without a next state are dropped); the gripper must be binary (BINARIZE_BACKFILL); movement dims
  come back from state differences (float32 rounding ~1e-7).
- droid, fmb, dobbe, libero, tdroid: exact up to float32 rounding (tdroid: binary gripper).
"""

from __future__ import annotations

import numpy as np

from pipeline.data.oxe import _common as c
from pipeline.data.oxe import transforms as tf
from pipeline.data.oxe.spec import DatasetSpec, Std, step

__all__ = ["SPECS", "DROID_Q01", "DROID_Q99"]

# Hard-coded DROID 1st/99th percentiles of the 6 movement dims (OpenVLA's idle-frame filter).
DROID_Q01 = (
    -0.7776297926902771,
    -0.5803514122962952,
    -0.5795090794563293,
    -0.6464047729969025,
    -0.7041108310222626,
    -0.8895104378461838,
)
DROID_Q99 = (
    0.7597932070493698,
    0.5726242214441299,
    0.7351000607013702,
    0.6705610305070877,
    0.6464948207139969,
    0.8897542208433151,
)


# ------------------------------------------------------------------ bridge_oxe (outdated OXE copy)
def _bridge_oxe(raw: dict, fix: bool) -> Std:
    """DROP_FIRST_STEP; world_vector + rotation_delta + float(open_gripper); BRIDGE_RELABEL (no binarize)."""
    action = c.cat(c.rtx_move(raw), step(raw, "action", "open_gripper").astype(np.float32))[1:]
    state = step(raw, "observation", "state")[1:]
    index = np.arange(1, len(action))
    derived = {"EEF_state": state[:-1, :6], "gripper_state": state[:-1, 6]}
    return Std(tf.bridge_relabel(action, state, wrap=fix), derived, index)


def bridge_states(plan: dict) -> tuple[np.ndarray, np.ndarray]:
    """Raw (actions[T+2, 7], states[T+2, 7]) whose BRIDGE relabeling reproduces plan["action"].

    Step 0: all-zero action (dropped); steps 1..T carry the plan; step T+1 has no next state (dropped).
    States integrate the planned movement from the planned first pose (float64, then float32); their
    roll/pitch/yaw are wrapped into [-pi, pi) like a real Euler reading, so a rotation across +-pi
    relabels to a jump of ~2 pi (OpenVLA does not wrap; fix_known_issues does).
    """
    a = c.plan_action(plan)
    t = len(a)
    pose = np.zeros((t + 2, 6))
    pose[1] = c.pose6(plan)[0]
    pose[2:] = pose[1] + np.cumsum(a[:, :6].astype(np.float64), axis=0)
    pose[0] = pose[1]
    pose[:, 3:] = tf.wrap_angle(pose[:, 3:])
    grip = np.asarray(plan["gripper"], np.float32)
    states = c.cat(pose, np.concatenate([grip[:1], grip, grip[-1:]]))
    actions = np.zeros((t + 2, 7), np.float32)
    actions[1 : t + 1] = a
    actions[t + 1, 6] = a[-1, 6]
    return actions, states


def _bridge_oxe_inverse(plan: dict, rng) -> dict:
    """Writes T + 2 raw steps: action/{world_vector, rotation_delta, open_gripper}, observation/state."""
    actions, states = bridge_states(plan)
    action = {**c.rtx_move_inverse(actions), "open_gripper": actions[:, 6] >= 0.5}
    return {"action": action, "observation": {"state": states}}


# ------------------------------------------------------------------ bridge_orig
def _bridge(raw: dict, fix: bool) -> Std:
    """DROP_FIRST_STEP; gripper BINARIZE_BACKFILL; BRIDGE_RELABEL from observation/state.

    Reads steps/action [T,7] and steps/observation/state [T,7]; T raw steps -> T-2 transitions
    (raw steps 1..T-2). fix: rotation deltas angle-wrapped, trailing undecided gripper rounded.
    """
    action = np.array(step(raw, "action")[1:], np.float32)
    state = step(raw, "observation", "state")[1:].astype(np.float32)
    action[:, 6] = tf.binarize_backfill(action[:, 6], round_tail=fix)
    index = np.arange(1, len(action))
    derived = {"EEF_state": state[:-1, :6], "gripper_state": state[:-1, 6]}
    return Std(tf.bridge_relabel(action, state, wrap=fix), derived, index)


def _bridge_inverse(plan: dict, rng) -> dict:
    """Writes T + 2 raw steps: action [T+2, 7] and observation/state [T+2, 7] (see bridge_states)."""
    actions, states = bridge_states(plan)
    return {"action": actions, "observation": {"state": states}}


_BRIDGE_FEATURES = {
    "episode_metadata": {
        "episode_id": "Scalar int32",
        "file_path": "Text",
        "has_image_0": "Scalar bool",
        "has_image_1": "Scalar bool",
        "has_image_2": "Scalar bool",
        "has_image_3": "Scalar bool",
        "has_language": "Scalar bool",
    },
    "steps": {
        "action": "Tensor(7,) float32",
        "discount": "Scalar float32",
        "is_first": "bool",
        "is_last": "bool",
        "is_terminal": "bool",
        "language_embedding": "Tensor(512,) float32",
        "language_instruction": "Text",
        "observation": {
            "image_0": c.IMG256,
            "image_1": c.IMG256,
            "image_2": c.IMG256,
            "image_3": c.IMG256,
            "state": "Tensor(7,) float32",
        },
        "reward": "Scalar float32",
    },
}


# ------------------------------------------------------------------ droid (+ droid_wipe)
def _droid(raw: dict, fix: bool) -> Std:
    """dims 0-5 = action_dict/cartesian_velocity; dim 6 = 1 - action_dict/gripper_position;
    proprio = observation/cartesian_position (6) + observation/gripper_position (1)."""
    vel = step(raw, "action_dict", "cartesian_velocity")
    grip = step(raw, "action_dict", "gripper_position")
    proprio = c.cat(
        step(raw, "observation", "cartesian_position"), step(raw, "observation", "gripper_position")
    )
    return Std(c.cat(vel, tf.invert(grip)), {"proprio": proprio})


def _droid_inverse(plan: dict, rng) -> dict:
    """Writes action_dict/{cartesian_velocity, gripper_position (1 = closed)}, observation/{cartesian_position, gripper_position}."""
    a = c.plan_action(plan).astype(np.float64)
    action_dict = {"cartesian_velocity": a[:, :6].copy(), "gripper_position": 1.0 - a[:, 6:7]}
    obs = {
        "cartesian_position": c.pose6(plan).astype(np.float64),
        "gripper_position": (1.0 - c.state_grip(plan)).astype(np.float64),
    }
    return {"action_dict": action_dict, "observation": obs}


def droid_idle_filter(ep: dict, normalized_action: np.ndarray) -> np.ndarray:
    """Frame filter: bool[T] keep (False = idle frame: every movement dim at DROID's normalized
    zero). Runs after statistics, on the action normalized with them (OpenVLA's order)."""
    return tf.idle_frame_mask(normalized_action, DROID_Q01, DROID_Q99)


def _droid_features(images: tuple) -> dict:
    """DROID feature dict with the given camera keys (256x256 jpeg, OpenVLA copy)."""
    f64 = "Tensor({},) float64".format
    return {
        "episode_metadata": {"file_path": "string", "recording_folderpath": "string"},
        "steps": {
            "action": f64(7),
            "action_dict": {
                "cartesian_position": f64(6),
                "cartesian_velocity": f64(6),
                "gripper_position": f64(1),
                "gripper_velocity": f64(1),
                "joint_position": f64(7),
                "joint_velocity": f64(7),
            },
            "discount": "Scalar float32",
            "is_first": "bool",
            "is_last": "bool",
            "is_terminal": "bool",
            "language_instruction": "string",
            "language_instruction_2": "string",
            "language_instruction_3": "string",
            "observation": {
                "cartesian_position": f64(6),
                **{key: c.IMG256 for key in images},
                "gripper_position": f64(1),
                "joint_position": f64(7),
            },
            "reward": "Scalar float32",
        },
    }


# ------------------------------------------------------------------ fmb / dobbe
def _fmb(raw: dict, fix: bool) -> Std:
    """Action passed through; proprio = observation/eef_pose (7) + observation/state_gripper_pose (1)."""
    proprio = c.cat(step(raw, "observation", "eef_pose"), step(raw, "observation", "state_gripper_pose"))
    return Std(step(raw, "action"), {"proprio": proprio})


def _fmb_inverse(plan: dict, rng) -> dict:
    """Writes action (unchanged) and observation/{eef_pose, state_gripper_pose (1 = closed)}."""
    obs = {"eef_pose": c.pose_quat(plan), "state_gripper_pose": 1.0 - np.asarray(plan["gripper"], np.float32)}
    return {"action": c.plan_action(plan).copy(), "observation": obs}


def _dobbe(raw: dict, fix: bool) -> Std:
    """Action passed through; proprio = observation/state (7 values)."""
    return Std(step(raw, "action"), {"proprio": step(raw, "observation", "state")})


def _dobbe_inverse(plan: dict, rng) -> dict:
    """Writes action (unchanged) and observation/state (pose + gripper)."""
    return {
        "action": c.plan_action(plan).copy(),
        "observation": {"state": c.cat(c.pose6(plan), c.state_grip(plan))},
    }


_FMB_OBS = {
    "color_id": "Scalar uint8",
    "eef_force": "Tensor(3,) float32",
    "eef_pose": "Tensor(7,) float32",
    "eef_torque": "Tensor(3,) float32",
    "eef_vel": "Tensor(6,) float32",
    "joint_pos": "Tensor(7,) float32",
    "joint_vel": "Tensor(7,) float32",
    "length": "string",
    "object_id": "Scalar uint8",
    "primitive": "string",
    "shape_id": "Scalar uint8",
    "size": "string",
    "state_gripper_pose": "Scalar float32",
    **{f"image_{v}": c.IMG256 for v in ("side_1", "side_2", "wrist_1", "wrist_2")},
    **{f"image_{v}_depth": "Tensor(256,256) float32" for v in ("side_1", "side_2", "wrist_1", "wrist_2")},
}


# ------------------------------------------------------------------ libero / tdroid
def _libero(raw: dict, fix: bool) -> Std:
    """dims 0-5 unchanged; dim 6 = INVERT(CLIP01(gripper)); EEF_state = state[0:6], gripper_state = state[-2:]."""
    a = step(raw, "action")
    s = step(raw, "observation", "state")
    state = {"EEF_state": s[:, :6], "gripper_state": s[:, -2:]}
    return Std(c.cat(a[:, :6], tf.invert(tf.clip01(a[:, 6]))), state)


def _libero_inverse(plan: dict, rng) -> dict:
    """Writes action (gripper -1 open / +1 close) and observation/state (pose + 2 finger positions)."""
    a = c.plan_action(plan)
    g = c.state_grip(plan) * 0.04
    action = c.cat(a[:, :6], tf.clip01_inverse(1.0 - a[:, 6]))
    return {"action": action, "observation": {"state": c.cat(c.pose6(plan), g, -g)}}


def _tdroid(raw: dict, fix: bool) -> Std:
    """dims 0-5 unchanged; dim 6 = BINARIZE_BACKFILL(gripper); EEF_state = cartesian_position[0:6],
    gripper_state = last value of gripper_position."""
    a = step(raw, "action")
    state = {
        "EEF_state": step(raw, "observation", "cartesian_position")[:, :6],
        "gripper_state": step(raw, "observation", "gripper_position")[:, -1],
    }
    return Std(c.cat(a[:, :6], tf.binarize_backfill(a[:, 6])), state)


def _tdroid_inverse(plan: dict, rng) -> dict:
    """Writes action (unchanged) and observation/{cartesian_position, gripper_position}."""
    obs = {"cartesian_position": c.pose6(plan), "gripper_position": c.state_grip(plan)}
    return {"action": c.plan_action(plan).copy(), "observation": obs}


_LIBERO = dict(
    version="1.0.0",
    features={
        "episode_metadata": {"file_path": "Text"},
        "steps": {
            "action": "Tensor(7,) float32",
            "discount": "Scalar float32",
            "is_first": "Scalar bool",
            "is_last": "Scalar bool",
            "is_terminal": "Scalar bool",
            "language_instruction": "Text",
            "observation": {
                "image": c.IMG256,
                "joint_state": "Tensor(7,) float32",
                "state": "Tensor(8,) float32",
                "wrist_image": c.IMG256,
            },
            "reward": "Scalar float32",
        },
    },
    cameras=c.cams("image", None, "wrist_image"),
    depth=c.NO_DEPTH,
    state_keys=("EEF_state", None, "gripper_state"),
    state_encoding="POS_EULER",
    action_encoding="EEF_POS",
    language_key="steps/language_instruction",
    splits={},
    state_size=9,
    control_hz=20,
    transform=_libero,
    inverse=_libero_inverse,
    episode_id_keys=("episode_metadata/file_path",),
    known_issues=("split sizes unverified; proprio is 9-D (6 + pad + 2-D gripper)",),
)

_TDROID = dict(
    version="1.0.0",
    features={
        "steps": {
            "action": "Tensor(7,) float32",
            "is_first": "bool",
            "is_last": "bool",
            "is_terminal": "bool",
            "language_instruction": "Text",
            "observation": {
                "cartesian_position": "Tensor(6,) float32",
                "gripper_position": "Tensor(1,) float32",
                "static_depth_image": "Tensor(256,256) float32",
                "static_image": c.IMG256,
            },
        },
    },
    cameras=c.cams("static_image"),
    depth=c.cams("static_depth_image"),
    state_keys=("EEF_state", None, "gripper_state"),
    state_encoding="POS_EULER",
    action_encoding="EEF_POS",
    language_key="steps/language_instruction",
    splits={},
    control_hz=5,
    transform=_tdroid,
    inverse=_tdroid_inverse,
    known_issues=("private dataset: feature shapes, version and splits are inferred/unverified",),
    synthesis_notes="gripper must be binary (BINARIZE_BACKFILL)",
)


def _rh20t(raw: dict, fix: bool) -> Std:
    """action = action/tcp_base + float(action/gripper); proprio = observation/tcp_base + gripper_width."""
    action = c.cat(step(raw, "action", "tcp_base"), step(raw, "action", "gripper"))
    proprio = c.cat(step(raw, "observation", "tcp_base"), step(raw, "observation", "gripper_width"))
    return Std(action, {"proprio": proprio})


def _rh20t_inverse(plan: dict, rng) -> dict:
    """Writes action/{tcp_base, gripper} and observation/{tcp_base, gripper_width}."""
    a = c.plan_action(plan)
    action = {"tcp_base": a[:, :6].copy(), "gripper": a[:, 6].copy()}
    obs = {"tcp_base": c.pose6(plan), "gripper_width": c.state_grip(plan)[:, 0] * 0.08}
    return {"action": action, "observation": obs}


def _libero_specs() -> tuple:
    """The four LIBERO suites (same layout)."""
    names = (
        "libero_spatial_no_noops",
        "libero_object_no_noops",
        "libero_goal_no_noops",
        "libero_10_no_noops",
    )
    return tuple(DatasetSpec(name=n, **_LIBERO) for n in names)


def _tdroid_specs() -> tuple:
    """The six T-DROID tasks (same layout)."""
    tasks = ("carrot_in_bowl", "pour_corn_in_pot", "flip_pot_upright", "move_object_onto_plate")
    tasks += ("knock_object_over", "cover_object_with_towel")
    return tuple(DatasetSpec(name=f"tdroid_{t}", **_TDROID) for t in tasks)


_DROID_IMAGES = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")

SPECS = (
    DatasetSpec(
        name="bridge_orig",
        version="1.0.0",
        features=_BRIDGE_FEATURES,
        cameras=c.cams("image_0", "image_1"),
        depth=c.NO_DEPTH,
        state_keys=("EEF_state", None, "gripper_state"),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key="steps/language_instruction",
        splits={"train": None, "val": None},
        in_magic_soup_plus=True,
        control_hz=5,
        aliases=("bridge_dataset",),
        known_issues=(
            "[fixable] relabelled rotation deltas are plain state differences (jumps of about 2*pi at angle wraps)",
            "[fixable] undecided gripper values at the episode end take the raw (non-binary) last value",
            "split sizes of the Berkeley release are unverified",
        ),
        transform=_bridge,
        inverse=_bridge_inverse,
        episode_id_keys=("episode_metadata/episode_id", "episode_metadata/file_path"),
        synthesis_notes="T + 2 raw steps (first and last dropped); gripper must be binary; rotations equal "
                        "the plan's modulo 2 pi (Euler states wrap)",
    ),
    DatasetSpec(
        name="fmb_dataset",
        version="0.0.1",
        features={
            "episode_metadata": {
                "episode_language_embedding": "Tensor(512,) float32",
                "episode_language_instruction": "string",
                "episode_task": "string",
                "file_path": "string",
            },
            "steps": {
                "action": "Tensor(7,) float32",
                "discount": "Scalar float32",
                "is_first": "bool",
                "is_last": "bool",
                "is_terminal": "bool",
                "language_embedding": "Tensor(512,) float32",
                "language_instruction": "string",
                "observation": _FMB_OBS,
                "reward": "Scalar float32",
            },
        },
        cameras=c.cams("image_side_1", "image_side_2", "image_wrist_1"),
        depth=c.cams("image_side_1_depth", "image_side_2_depth", "image_wrist_1_depth"),
        state_keys=("proprio",),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key="steps/language_instruction",
        splits={"train": 8611},
        in_magic_soup_plus=True,
        control_hz=10,
        aliases=("fmb",),
        known_issues=(
            "gripper polarity of the source action is not converted (if 1 = closed it is inverted); unverified",
            "proprio labelled POS_EULER holds xyz + quaternion + gripper",
        ),
        transform=_fmb,
        inverse=_fmb_inverse,
        episode_id_keys=("episode_metadata/file_path",),
    ),
    DatasetSpec(
        name="dobbe",
        version="0.0.1",
        features=c.ext_rlds(
            "Tensor(7,) float32",
            {
                "gripper": "Tensor(1,) float32",
                "quat": "Tensor(4,) float32",
                "rot": "Tensor(3,) float32",
                "state": "Tensor(7,) float32",
                "wrist_image": c.IMG256,
                "xyz": "Tensor(3,) float32",
            },
            episode_metadata={"file_path": "string"},
            language="string",
        ),
        cameras=c.cams("wrist_image"),
        depth=c.NO_DEPTH,
        state_keys=("proprio",),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key="steps/language_instruction",
        splits={"train": 5208},
        in_magic_soup_plus=True,
        state_size=7,
        control_hz=3.75,
        known_issues=("the only (gripper-mounted) camera is used as primary; action semantics undocumented",),
        transform=_dobbe,
        inverse=_dobbe_inverse,
        episode_id_keys=("episode_metadata/file_path",),
    ),
    DatasetSpec(
        name="droid",
        version="1.0.0",
        features=_droid_features(_DROID_IMAGES),
        cameras=c.cams("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left"),
        depth=c.NO_DEPTH,
        state_keys=("proprio",),
        state_encoding="POS_QUAT",
        action_encoding="EEF_POS",
        language_key="steps/language_instruction",
        splits={"train": None},
        in_magic_soup_plus=True,
        frame_filter=("droid_idle", droid_idle_filter),
        state_size=7,
        control_hz=15,
        known_issues=(
            "exterior cameras swapped for half the episodes (deterministic here: hash of dataset + episode_id)",
            "idle-frame filter uses hard-coded q01/q99; they must match the DROID copy in use",
            "proprio labelled POS_QUAT holds xyz + euler + gripper",
        ),
        transform=_droid,
        inverse=_droid_inverse,
        episode_id_keys=("episode_metadata/file_path",),
        camera_swap=("primary", "secondary"),
    ),
    # ---------------- brief entries (not in oxe_magic_soup_plus)
    DatasetSpec(
        name="bridge_oxe",
        version="0.1.0",
        features={
            "episode_id": "string",
            **c.rtx(
                {**c.RTX_MOVE, "open_gripper": "bool"},
                {"image": c.IMG256, "state": "Tensor(7,) float32"},
            ),
        },
        cameras=c.cams("image"),
        depth=c.NO_DEPTH,
        state_keys=("EEF_state", None, "gripper_state"),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key="steps/observation/natural_language_instruction",
        splits={"train": 25460, "test": 3475},
        control_hz=5,
        known_issues=(
            "OpenVLA maps secondary to 'image_1', which this copy lacks; registered with secondary = None",
            "[fixable] relabelled rotation deltas are not angle-wrapped (jumps of about 2*pi)",
        ),
        transform=_bridge_oxe,
        inverse=_bridge_oxe_inverse,
        episode_id_keys=("episode_id",),
        synthesis_notes="T + 2 raw steps (first and last are dropped); gripper stored as bool; rotations "
                        "equal the plan's modulo 2 pi (Euler states wrap)",
    ),
    DatasetSpec(
        name="droid_wipe",
        version="1.0.0",
        features=_droid_features(("exterior_image_2_left", "wrist_image_left")),
        cameras=c.cams("exterior_image_2_left", None, "wrist_image_left"),
        depth=c.NO_DEPTH,
        state_keys=("proprio",),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key="steps/language_instruction",
        splits={},
        state_size=7,
        control_hz=15,
        known_issues=(
            "private dataset: layout inferred from the DROID transform; no camera swap, no idle filter",
        ),
        transform=_droid,
        inverse=_droid_inverse,
        episode_id_keys=("episode_metadata/file_path",),
    ),
    DatasetSpec(
        name="roboset",
        version="0.1.0",
        features={
            "episode_metadata": {"file_path": "string", "trial_id": "string"},
            "steps": {
                "action": "Tensor(8,) float32",
                "discount": "Scalar float32",
                "is_first": "bool",
                "is_last": "bool",
                "is_terminal": "bool",
                "language_instruction": "string",
                "observation": {
                    "image_left": "Image(240,424,3) uint8 jpeg",
                    "image_right": "Image(240,424,3) uint8 jpeg",
                    "image_top": "Image(240,424,3) uint8 jpeg",
                    "image_wrist": "Image(240,424,3) uint8 jpeg",
                    "state": "Tensor(8,) float32",
                    "state_velocity": "Tensor(8,) float32",
                },
                "reward": "Scalar float32",
            },
        },
        cameras=c.cams("image_left", "image_right", "image_wrist"),
        depth=c.NO_DEPTH,
        state_keys=("proprio",),
        state_encoding="JOINT",
        action_encoding="JOINT_POS",
        language_key="steps/language_instruction",
        splits={"train": 18250},
        control_hz=5,
        aliases=("robo_set",),
    ),
    DatasetSpec(
        name="rh20t",
        version="0.1.0",
        features={
            "steps": {
                "action": {"gripper": "Tensor() float32", "tcp_base": "Tensor(6,) float32"},
                "is_first": "bool",
                "is_last": "bool",
                "is_terminal": "bool",
                "language_instruction": "Text",
                "observation": {
                    "gripper_width": "Tensor() float32",
                    "image_front": c.IMG256,
                    "image_side_right": c.IMG256,
                    "image_wrist": c.IMG256,
                    "tcp_base": "Tensor(6,) float32",
                },
            },
        },
        cameras=c.cams("image_front", "image_side_right", "image_wrist"),
        depth=c.NO_DEPTH,
        state_keys=("proprio",),
        state_encoding="POS_EULER",
        action_encoding="EEF_POS",
        language_key="steps/language_instruction",
        splits={},
        state_size=7,
        known_issues=(
            "Octo-hosted conversion: version, shapes, image format and language key are unverified guesses",
        ),
        transform=_rh20t,
        inverse=_rh20t_inverse,
    ),
    *_libero_specs(),
    *_tdroid_specs(),
)
