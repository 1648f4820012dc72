"""One hand-built raw episode per oxe_magic_soup_plus dataset, expected outputs worked out by hand."""

import math
import zlib

import numpy as np
import pytest
from _oxe_raw import build_raw

from pipeline.data import schema
from pipeline.data.oxe import MAGIC_SOUP_PLUS, get_spec

HALF = math.sqrt(0.5)
WV = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]
RD = [[0.01, 0.02, 0.03], [0.04, 0.05, 0.06], [0.07, 0.08, 0.09]]
MOVE = [
    [0.1, 0.2, 0.3, 0.01, 0.02, 0.03],
    [0.4, 0.5, 0.6, 0.04, 0.05, 0.06],
    [0.7, 0.8, 0.9, 0.07, 0.08, 0.09],
]


def f32(x):
    return np.array(x, np.float32)


def text(*values):
    return np.array([v.encode() for v in values], object)


def rows(row, n=3):
    return f32([row] * n)


def with_grip(move, grips):
    return [m + [g] for m, g in zip(move, grips)]


def lang3(s):
    return {"natural_language_instruction": text(s, s, s)}


def _rtx_move():
    return {"world_vector": f32(WV), "rotation_delta": f32(RD)}


def _ext7(last):
    return f32(with_grip(MOVE, last))


# Each case: steps, episode-level values, expected action, expected proprio, expected language.
CASES = {
    "fractal20220817_data": lambda: (
        {
            "action": {**_rtx_move(), "gripper_closedness_action": f32([[0], [0.5], [-0.5]])},
            "observation": {
                "base_pose_tool_reached": rows([1, 2, 3, 0, 0, 0, 1]),
                "gripper_closed": f32([[0], [1], [0]]),
                **lang3("Pick Can"),
            },
        },
        {},
        with_grip(MOVE, [1, 0, 1]),
        [[1, 2, 3, 0, 0, 0, 1, 0], [1, 2, 3, 0, 0, 0, 1, 1], [1, 2, 3, 0, 0, 0, 1, 0]],
        "Pick Can",
    ),
    "kuka": lambda: (
        {
            "action": {**_rtx_move(), "gripper_closedness_action": f32([[0.2], [0], [0]])},
            "observation": {
                "clip_function_input/base_pose_tool_reached": np.array(
                    [zlib.compress(f32([1, 2, 3, 0, 0, 0, 1]).tobytes())] * 3, object
                ),
                "gripper_closed": np.array([zlib.compress(f32([0.5]).tobytes())] * 3, object),
                **lang3("pick anything"),
            },
        },
        {"success": np.bool_(True)},
        with_grip(MOVE, [0, 0, 0]),
        [[1, 2, 3, 0, 0, 0, 1, 0.5]] * 3,
        "pick anything",
    ),
    "taco_play": lambda: (
        {
            "action": {"rel_actions_world": _ext7([-1, 1, 0.5])},
            "observation": {"robot_obs": rows(list(range(15))), **lang3("open drawer")},
        },
        {},
        with_grip(MOVE, [0, 1, 0.5]),
        [[0, 1, 2, 3, 4, 5, 0, 7]] * 3,  # OpenVLA reads robot_obs[7] as the gripper
        "open drawer",
    ),
    "jaco_play": lambda: (
        {
            "action": {"world_vector": f32(WV), "gripper_closedness_action": f32([[0], [-0.5], [0.5]])},
            "observation": {"end_effector_cartesian_pos": rows([1, 2, 3, 4, 5, 6, 7]), **lang3("place milk")},
        },
        {},
        [[0.1, 0.2, 0.3, 0, 0, 0, 0], [0.4, 0.5, 0.6, 0, 0, 0, 1], [0.7, 0.8, 0.9, 0, 0, 0, 0]],
        [[1, 2, 3, 4, 5, 6, 0, 7]] * 3,
        "place milk",
    ),
    "berkeley_cable_routing": lambda: (
        {
            "action": _rtx_move(),
            "observation": {"robot_state": rows([1, 2, 3, 4, 5, 6, 7]), **lang3("route cable")},
        },
        {},
        with_grip(MOVE, [0, 0, 0]),
        [[1, 2, 3, 4, 5, 6, 7, 0]] * 3,
        "route cable",
    ),
    "roboturk": lambda: (
        {
            "action": {**_rtx_move(), "gripper_closedness_action": f32([[1], [0], [-1]])},
            "observation": lang3("fold cloth"),
        },
        {},
        with_grip(MOVE, [0, 1, 1]),
        [[0] * 8] * 3,
        "fold cloth",
    ),
    "viola": lambda: (
        {
            "action": {**_rtx_move(), "gripper_closedness_action": f32([1, -1, 0.3])},
            "observation": {
                "joint_states": rows([1, 2, 3, 4, 5, 6, 7]),
                "gripper_states": rows([0.04]),
                **lang3("Stack"),
            },
        },
        {},
        with_grip(MOVE, [0, 1, 0.7]),
        [[1, 2, 3, 4, 5, 6, 7, 0.04]] * 3,
        "Stack",
    ),
    "berkeley_autolab_ur5": lambda: (
        {
            "action": {**_rtx_move(), "gripper_closedness_action": f32([0, 1, 0])},
            "observation": {"robot_state": rows(list(range(15))), **lang3("pick cup")},
        },
        {},
        with_grip(MOVE, [1, 0, 0]),
        [[6, 7, 8, 9, 10, 11, 12, 13]] * 3,
        "pick cup",
    ),
    "toto": lambda: (
        {
            "action": {**_rtx_move(), "open_gripper": np.array([True, False, True])},
            "observation": {"state": rows([1, 2, 3, 4, 5, 6, 7]), **lang3("pour")},
        },
        {},
        with_grip(MOVE, [1, 0, 1]),
        [[1, 2, 3, 4, 5, 6, 7, 0]] * 3,
        "pour",
    ),
    "language_table": lambda: (
        {
            "action": f32([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]),
            "observation": {
                "effector_translation": rows([0.5, 0.6]),
                # "schiebe Würfel" (ü = 252), NUL, then junk that must be cut
                "instruction": np.stack(
                    [np.array([ord(ch) for ch in "schiebe Würfel"] + [0, 120] + [0] * 496, np.int32)] * 3
                ),
            },
        },
        {"episode_id": b"lt-000042"},
        [[0.1, 0.2, 0, 0, 0, 0, 1], [0.3, 0.4, 0, 0, 0, 0, 1], [0.5, 0.6, 0, 0, 0, 0, 1]],
        [[0.5, 0.6, 0, 0, 0, 0, 0, 0]] * 3,
        "schiebe Würfel",
    ),
    "stanford_hydra_dataset_converted_externally_to_rlds": lambda: (
        {
            "action": _ext7([1, 0, 1]),
            "observation": {"state": rows(list(range(27)))},
            "language_instruction": text("Make Coffee", "Make Coffee", "Make Coffee"),
        },
        {"episode_metadata": {"file_path": b"/data/hydra/ep1.npy"}},
        with_grip(MOVE, [0, 1, 0]),
        [[0, 1, 2, 7, 8, 9, 0, 24]] * 3,
        "Make Coffee",
    ),
    "austin_buds_dataset_converted_externally_to_rlds": lambda: (
        {
            "action": _ext7([-1, 1, 0.25]),
            "observation": {"state": rows(list(range(24)))},
            "language_instruction": text("a", "a", "a"),
        },
        {},
        with_grip(MOVE, [1, 0, 0.75]),
        [[0, 1, 2, 3, 4, 5, 6, 7]] * 3,
        "a",
    ),
    "nyu_franka_play_dataset_converted_externally_to_rlds": lambda: (
        {
            "action": f32([[*range(7), 0.1, 0.2, 0.3, 0.01, 0.02, 0.03, g, 0] for g in (-1, 1, 0.5)]),
            "observation": {"state": rows(list(range(13)))},
            "language_instruction": text("b", "b", "b"),
        },
        {},
        [[0.1, 0.2, 0.3, 0.01, 0.02, 0.03, g] for g in (0, 1, 0.5)],
        [[7, 8, 9, 10, 11, 12, 0, 0]] * 3,
        "b",
    ),
    "furniture_bench_dataset_converted_externally_to_rlds": lambda: (
        {
            "action": f32(
                [
                    [0.1, 0.2, 0.3, 0, 0, HALF, HALF, -1],
                    [0.4, 0.5, 0.6, 0, 0, 0, 1, 1],
                    [0.7, 0.8, 0.9, HALF, 0, 0, HALF, 0.5],
                ]
            ),
            "observation": {"state": rows(list(range(35)))},
            "language_instruction": text("c", "c", "c"),
        },
        {},
        [
            [0.1, 0.2, 0.3, 0, 0, math.pi / 2, 1],
            [0.4, 0.5, 0.6, 0, 0, 0, 0],
            [0.7, 0.8, 0.9, math.pi / 2, 0, 0, 0.5],
        ],
        [[0, 1, 2, 3, 4, 5, 6, 34]] * 3,
        "c",
    ),
    "ucsd_kitchen_dataset_converted_externally_to_rlds": lambda: (
        {
            "action": f32([m + [1, 0] for m in MOVE]),
            "observation": {"state": rows(list(range(21)))},
            "language_instruction": text("d", "d", "d"),
        },
        {},
        with_grip(MOVE, [1, 1, 1]),
        [[0, 1, 2, 3, 4, 5, 6, 0]] * 3,
        "d",
    ),
    "austin_sailor_dataset_converted_externally_to_rlds": lambda: (
        {
            "action": _ext7([-1, 1, 0]),
            "observation": {"state": rows([1, 2, 3, 4, 5, 6, 7, 8])},
            "language_instruction": text("e", "e", "e"),
        },
        {},
        with_grip(MOVE, [1, 0, 1]),
        [[1, 2, 3, 4, 5, 6, 7, 8]] * 3,
        "e",
    ),
    "austin_sirius_dataset_converted_externally_to_rlds": lambda: (
        {
            "action": _ext7([-1, 1, 0]),
            "observation": {"state": rows([1, 2, 3, 4, 5, 6, 7, 8])},
            "language_instruction": text("f", "f", "f"),
        },
        {},
        with_grip(MOVE, [1, 0, 1]),
        [[1, 2, 3, 4, 5, 6, 7, 8]] * 3,
        "f",
    ),
    "dlr_edan_shared_control_converted_externally_to_rlds": lambda: (
        {
            "action": _ext7([1, 0, -1]),
            "observation": {"state": rows([1, 2, 3, 4, 5, 6, 7])},
            "language_instruction": text("g", "g", "g"),
        },
        {},
        with_grip(MOVE, [0, 1, 2]),  # INVERT without clipping: -1 -> 2
        [[1, 2, 3, 4, 5, 6, 7, 0]] * 3,
        "g",
    ),
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": lambda: (
        {
            "action": f32(
                [
                    [0.1, 0.2, 0.3, 0, 0.38268343, 0, 0.92387953, 1],
                    [0.4, 0.5, 0.6, 0, HALF, 0, HALF, 0],
                    [0.7, 0.8, 0.9, 0, 0, 0, 1, 1],
                ]
            ),
            "observation": {"state": rows(list(range(20)))},
            "language_instruction": text("h", "h", "h"),
        },
        {},
        [
            [0.1, 0.2, 0.3, 0, math.pi / 4, 0, 1],
            [0.4, 0.5, 0.6, 0, math.pi / 2, 0, 0],
            [0.7, 0.8, 0.9, 0, 0, 0, 1],
        ],
        [[0, 1, 2, 3, 4, 5, 6, 7]] * 3,
        "h",
    ),
    "utaustin_mutex": lambda: (
        {
            "action": _ext7([-1, 1, 0.25]),
            "observation": {"state": rows(list(range(24)))},
            "language_instruction": text("i", "i", "i"),
        },
        {},
        with_grip(MOVE, [1, 0, 0.75]),
        [[0, 1, 2, 3, 4, 5, 6, 7]] * 3,
        "i",
    ),
    "berkeley_fanuc_manipulation": lambda: (
        {
            "action": f32(MOVE),
            "observation": {"state": f32([[0, 1, 2, 3, 4, 5, s, 0, 0, 0, 0, 0, 0] for s in (1, 0, 1)])},
            "language_instruction": text("j", "j", "j"),
        },
        {},
        with_grip(MOVE, [0, 1, 0]),
        [[0, 1, 2, 3, 4, 5, 0, s] for s in (1, 0, 1)],
        "j",
    ),
    "cmu_stretch": lambda: (
        {
            "action": f32([m + [1, 0] for m in MOVE]),
            "observation": {"state": rows([1, 2, 3, 0.5])},
            "language_instruction": text("k", "k", "k"),
        },
        {},
        with_grip(MOVE, [1, 1, 1]),
        [[1, 2, 3, 0, 0, 0, 0, 0.5]] * 3,
        "k",
    ),
    "bc_z": lambda: (
        {
            "action": {
                "future/xyz_residual": rows([0.1, 0.2, 0.3] + [9] * 27),
                "future/axis_angle_residual": rows([0, 0, 0.5] + [9] * 27),
                "future/target_close": np.array([[1] + [0] * 9, [0] * 10, [1] * 10], np.int64),
            },
            "observation": {
                "present/xyz": rows([1, 2, 3]),
                "present/axis_angle": rows([0.1, 0.2, 0.3]),
                "present/sensed_close": rows([0.9]),
                **lang3("pick sponge"),
            },
        },
        {},
        [[0.1, 0.2, 0.3, 0, 0, 0.5, g] for g in (0, 1, 0)],
        [[1, 2, 3, 0.1, 0.2, 0.3, 0, 0.9]] * 3,
        "pick sponge",
    ),
    "fmb_dataset": lambda: (
        {
            "action": _ext7([1, 0, 1]),
            "observation": {"eef_pose": rows([1, 2, 3, 4, 5, 6, 7]), "state_gripper_pose": f32([1, 0, 1])},
            "language_instruction": text("insert peg", "insert peg", "insert peg"),
        },
        {"episode_metadata": {"file_path": b"fmb/ep_3.npy"}},
        with_grip(MOVE, [1, 0, 1]),
        [[1, 2, 3, 4, 5, 6, 7, s] for s in (1, 0, 1)],
        "insert peg",
    ),
    "dobbe": lambda: (
        {
            "action": _ext7([1, 0, 1]),
            "observation": {"state": rows([1, 2, 3, 4, 5, 6, 7])},
            "language_instruction": text("open door", "open door", "open door"),
        },
        {},
        with_grip(MOVE, [1, 0, 1]),
        [[1, 2, 3, 4, 5, 6, 7]] * 3,
        "open door",
    ),
    "droid": lambda: (
        {
            "action_dict": {
                "cartesian_velocity": np.array(MOVE, np.float64),
                "gripper_position": np.array([[0.25], [1.0], [0.0]]),
            },
            "observation": {
                "cartesian_position": np.array([[1, 2, 3, 4, 5, 6]] * 3, np.float64),
                "gripper_position": np.array([[0.3]] * 3),
            },
            "language_instruction": text(
                "Put the marker in the cup", "Put the marker in the cup", "Put the marker in the cup"
            ),
        },
        {"episode_metadata": {"file_path": b"/droid/2023-07-01/trajectory.h5"}},
        with_grip(MOVE, [0.75, 0, 1]),
        [[1, 2, 3, 4, 5, 6, 0.3]] * 3,
        "Put the marker in the cup",
    ),
}


def _bridge_case():
    states = f32(
        [
            [0, 0, 0, 0, 0, 0, 1],
            [0.1, 0, 0, 0, 0, 0, 1],
            [0.3, 0.1, 0, 0, 0, 0.2, 0],
            [0.6, 0.1, -0.1, 0, 0, 0.5, 0],
        ]
    )
    actions = f32([[0] * 7, [9] * 6 + [1.0], [9] * 6 + [0.5], [9] * 6 + [0.0]])
    steps = {
        "action": actions,
        "observation": {"state": states, "image_0": np.array([b"i0_%d" % t for t in range(4)], object)},
        "language_instruction": text(*["put the Spoon"] * 4),
        "is_terminal": np.array([False, False, False, True]),
    }
    expected = [[0.2, 0.1, 0, 0, 0, 0.2, 1], [0.3, 0, -0.1, 0, 0, 0.3, 0]]  # 4 raw steps -> 2 transitions
    proprio = [[0.1, 0, 0, 0, 0, 0, 0, 1], [0.3, 0.1, 0, 0, 0, 0.2, 0, 0]]
    return steps, {"episode_metadata": {"episode_id": np.int32(7)}}, expected, proprio, "put the Spoon"


CASES["bridge_orig"] = _bridge_case


def test_cases_cover_the_mixture():
    assert set(CASES) == set(MAGIC_SOUP_PLUS) and len(MAGIC_SOUP_PLUS) == 27


@pytest.mark.parametrize("name", MAGIC_SOUP_PLUS)
def test_standardize_hand_built(name):
    spec = get_spec(name)
    steps, episode, action, proprio, language = CASES[name]()
    ep = spec.standardize(build_raw(spec, steps, episode, index=5))
    assert schema.validate_episode(ep) == []
    out = ep["steps"]
    np.testing.assert_allclose(out["action"], action, atol=1e-6)
    np.testing.assert_allclose(out["proprio"], proprio, atol=1e-6)
    assert out["proprio"].shape[1] == spec.state_size
    assert list(out["language_instruction"]) == [language] * len(action)
    assert ep["dataset_name"] == name and ep["source_index"] == 5
    t = len(action)
    np.testing.assert_array_equal(out["is_first"], [True] + [False] * (t - 1))
    np.testing.assert_array_equal(out["is_last"], [False] * (t - 1) + [True])
    for slot in ("primary", "secondary", "wrist"):  # a slot without a camera is padding, every other has images
        assert (list(out[f"image_{slot}"]) == [b""] * t) == (spec.cameras[slot] is None), slot


def test_bridge_details():
    spec = get_spec("bridge_orig")
    steps, episode, *_ = _bridge_case()
    ep = spec.standardize(build_raw(spec, steps, episode))
    assert ep["episode_id"] == "7"
    assert list(ep["steps"]["image_primary"]) == [b"i0_1", b"i0_2"]  # raw steps 1 and 2 survive
    np.testing.assert_array_equal(ep["steps"]["is_terminal"], [False, True])  # dropped terminal tail carried


@pytest.mark.parametrize(
    ("name", "episode_id"),
    [
        ("language_table", "lt-000042"),
        ("stanford_hydra_dataset_converted_externally_to_rlds", "/data/hydra/ep1.npy"),
        ("fmb_dataset", "fmb/ep_3.npy"),
        ("fractal20220817_data", "fractal20220817_data-train.tfrecord-00000-of-00001#5"),
        (
            "austin_buds_dataset_converted_externally_to_rlds",
            "austin_buds_dataset_converted_externally_to_rlds-train.tfrecord-00000-of-00001#5",
        ),
    ],
)
def test_episode_ids(name, episode_id):
    spec = get_spec(name)
    steps, episode, *_ = CASES[name]()
    ep = spec.standardize(build_raw(spec, steps, episode, index=5))
    assert ep["episode_id"] == episode_id
    assert ep["source_file"].endswith("-train.tfrecord-00000-of-00001")
