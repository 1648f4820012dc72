"""Registry API, spec fields, known-issue fixes, filters and the DROID camera swap."""

import math
import pickle
import re

import numpy as np
import pytest
from _oxe_raw import build_raw

from pipeline.data.oxe import MAGIC_SOUP_PLUS, STANDARDIZATION_VERSION, DatasetSpec, get_spec, list_datasets
from pipeline.errors import UserError

HALF = math.sqrt(0.5)
ALL = list_datasets()
LEAF = re.compile(
    r"^(Image\(\d+,\d+,\d+\) (uint8|uint16|float32) (jpeg|png|unspecified)"
    r"|Tensor\((\d+(,\d+)*,?)?\) \w+( zlib)?|Scalar \w+|Text|string|bool)$"
)


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def test_public_api():
    assert len(MAGIC_SOUP_PLUS) == 27 and len(set(MAGIC_SOUP_PLUS)) == 27
    assert list_datasets(mixture_only=True) == list(MAGIC_SOUP_PLUS)
    assert set(MAGIC_SOUP_PLUS) < set(ALL)
    assert isinstance(STANDARDIZATION_VERSION, str) and STANDARDIZATION_VERSION
    assert isinstance(get_spec("droid"), DatasetSpec)


@pytest.mark.parametrize("name", ALL)
def test_spec_fields(name):
    spec = get_spec(name)
    assert spec.name == name
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec.version)
    assert "steps" in spec.features
    bad = [(path, leaf) for path, leaf in _leaves(spec.features) if not LEAF.match(leaf)]
    assert bad == []
    assert set(spec.cameras) == set(spec.depth) == {"primary", "secondary", "wrist"}
    assert all(isinstance(s, str) for s in spec.known_issues)
    assert spec.in_magic_soup_plus == (name in MAGIC_SOUP_PLUS)
    assert isinstance(spec.splits, dict) and isinstance(spec.aliases, tuple)
    camera_keys = {k for k in spec.cameras.values() if k}
    assert camera_keys <= set(spec.features["steps"]["observation"])
    if spec.language_key:
        assert spec.language_key.startswith("steps/")


def test_magic_soup_facts():
    assert get_spec("bridge_orig").version == "1.0.0"
    assert get_spec("fmb_dataset").version == "0.0.1"
    assert get_spec("kuka").features["steps"]["observation"]["gripper_closed"] == "Tensor(1,) float32 zlib"
    assert (
        get_spec("fractal20220817_data").features["steps"]["observation"]["image"]
        == "Image(256,256,3) uint8 jpeg"
    )
    assert get_spec("droid").state_size == 7 and get_spec("dobbe").state_size == 7
    assert get_spec("bc_z").splits == {"train": 39350, "val": 3914}
    assert get_spec("dobbe").control_hz == 3.75


def test_unknown_name_suggests_close_names():
    with pytest.raises(UserError, match="bridge_orig"):
        get_spec("bridge_orgi")
    with pytest.raises(UserError, match="unknown OXE dataset 'zzz'"):
        get_spec("zzz")


def test_alias_uses_the_same_config():
    alias = get_spec("bridge_dataset")
    assert alias.name == "bridge_dataset" and alias.transform is get_spec("bridge_orig").transform


@pytest.mark.parametrize(
    "name",
    ["roboset", "berkeley_mvp_converted_externally_to_rlds", "berkeley_rpt_converted_externally_to_rlds"],
)
def test_joint_pos_refused(name):
    spec = get_spec(name)
    assert spec.action_encoding == "JOINT_POS"
    msg = f"{name} uses JOINT_POS actions; OpenVLA trains only on EEF_POS"
    with pytest.raises(UserError, match=re.escape(msg)):
        spec.check_trainable()
    with pytest.raises(UserError, match="JOINT_POS"):
        spec.standardize({"steps": {}})


def test_missing_key_is_a_user_error():
    spec = get_spec("taco_play")
    raw = build_raw(spec, {"action": {"rel_actions_world": np.zeros((2, 7), np.float32)}})
    del raw["steps"]["observation"]["robot_obs"]
    with pytest.raises(UserError, match="taco_play: raw episode lacks key 'steps/observation/robot_obs'"):
        spec.standardize(raw)


# ------------------------------------------------------------------ fix_known_issues
FIXED_FIELDS = {
    "taco_play": {"proprio"},
    "bc_z": {"action"},
    "berkeley_fanuc_manipulation": {"action"},
    "bridge_orig": {"action"},
    "bridge_oxe": {"action"},
    "cmu_play_fusion": {"action"},
}


def _diff(a, b):
    return {k for k in a["steps"] if not np.array_equal(np.stack(a["steps"][k]), np.stack(b["steps"][k]))}


def test_fixable_issues_are_documented():
    fixable = {n for n in ALL if any(i.startswith("[fixable]") for i in get_spec(n).known_issues)}
    assert fixable == set(FIXED_FIELDS)


def _fix_cases():
    f32 = np.float32
    states = np.array(
        [
            [0, 0, 0, 0, 0, 3.1, 1],
            [0, 0, 0, 0, 0, 3.1, 1],
            [0, 0, 0, 0, 0, -3.1, 1],
            [0, 0, 0, 0, 0, -3.0, 1],
        ],
        f32,
    )
    bridge_actions = np.zeros((4, 7), f32)
    bridge_actions[:, 6] = [0, 1, 0.5, 0.7]
    rtx_move = {"world_vector": np.zeros((4, 3), f32), "rotation_delta": np.zeros((4, 3), f32)}
    w = 2 * math.pi - 6.2
    return {
        # name: (steps, expected default, expected fixed, field)
        "taco_play": (
            {
                "action": {"rel_actions_world": np.zeros((1, 7), f32)},
                "observation": {"robot_obs": np.arange(15, dtype=f32)[None]},
            },
            [[0, 1, 2, 3, 4, 5, 0, 7]],
            [[0, 1, 2, 3, 4, 5, 0, 6]],
            "proprio",
        ),
        "berkeley_fanuc_manipulation": (
            {
                "action": np.zeros((3, 6), f32),
                "observation": {"state": np.array([[0] * 6 + [s] + [0] * 6 for s in (1, 0, 1)], f32)},
            },
            [[0] * 6 + [0], [0] * 6 + [1], [0] * 6 + [0]],
            [[0] * 6 + [1], [0] * 6 + [0], [0] * 6 + [0]],
            "action",
        ),
        "bc_z": (
            {
                "action": {
                    "future/axis_angle_residual": np.array([[0, 0, 4.0] + [0] * 27], f32),
                    "future/target_close": np.zeros((1, 10), np.int64),
                }
            },
            [[0, 0, 0, 0, 0, 4.0, 1]],
            [[0, 0, 0, 0, 0, 4.0 - 2 * math.pi, 1]],
            "action",
        ),
        "bridge_orig": (
            {"action": bridge_actions, "observation": {"state": states}},
            [[0, 0, 0, 0, 0, -6.2, 1], [0, 0, 0, 0, 0, 0.1, 0.7]],
            [[0, 0, 0, 0, 0, w, 1], [0, 0, 0, 0, 0, 0.1, 1]],
            "action",
        ),
        "bridge_oxe": (
            {
                "action": {**rtx_move, "open_gripper": np.array([False, True, True, True])},
                "observation": {"state": states},
            },
            [[0, 0, 0, 0, 0, -6.2, 1], [0, 0, 0, 0, 0, 0.1, 1]],
            [[0, 0, 0, 0, 0, w, 1], [0, 0, 0, 0, 0, 0.1, 1]],
            "action",
        ),
        "cmu_play_fusion": (
            {"action": np.array([[0.1, 0.2, 0.3, 0, 0, HALF, HALF, 1, 0]], f32)},
            [[0.1, 0.2, 0.3, HALF, HALF, 1, 0]],
            [[0.1, 0.2, 0.3, 0, 0, math.pi / 2, 1]],
            "action",
        ),
    }


@pytest.mark.parametrize("name", sorted(FIXED_FIELDS))
def test_fix_known_issues_changes_documented_fields(name):
    spec = get_spec(name)
    steps, default, fixed, field = _fix_cases()[name]
    raw = build_raw(spec, steps)
    a, b = spec.standardize(raw), spec.standardize(raw, fix_known_issues=True)
    np.testing.assert_allclose(a["steps"][field], default, atol=1e-5)
    np.testing.assert_allclose(b["steps"][field], fixed, atol=1e-5)
    assert _diff(a, b) == FIXED_FIELDS[name]


# ------------------------------------------------------------------ filters and DROID swap
def test_kuka_success_filter():
    spec = get_spec("kuka")
    ((reason, keep),) = spec.episode_filters
    assert reason == "kuka_success"
    assert keep({"success": np.bool_(True), "steps": {}}) is True
    assert keep({"success": np.bool_(False), "steps": {}}) is False
    assert all(get_spec(n).episode_filters == () for n in MAGIC_SOUP_PLUS if n != "kuka")


def test_droid_idle_frame_filter():
    """After normalization with the dataset's statistics: zero actions are idle when those statistics
    are DROID's published percentiles, and kept (as in OpenVLA) when they are not."""
    from pipeline.data.oxe.datasets_other import DROID_Q01, DROID_Q99
    from pipeline.data.stream.normalize import NormStats, normalize_bounds_q99

    spec = get_spec("droid")
    reason, keep = spec.frame_filter
    assert reason == "droid_idle"
    action = np.zeros((4, 7), np.float32)
    action[1, 0] = 0.05  # moving
    action[2, 6] = 1.0  # gripper only: still idle (filter looks at the 6 movement dims)
    action[3, 5] = 1e-7  # below the tolerance after normalization

    def stats(q01, q99):
        q01, q99 = np.array([*q01, 0.0]), np.array([*q99, 1.0])
        return NormStats(q01=q01, q99=q99, min=q01 - 1, max=q99 + 1, mask=np.array([True] * 6 + [False]))

    droid = normalize_bounds_q99(action, stats(DROID_Q01, DROID_Q99))
    np.testing.assert_array_equal(keep({"steps": {"action": action}}, droid), [False, True, False, False])
    other = normalize_bounds_q99(action, stats([-1.0] * 6, [0.5] * 6))
    np.testing.assert_array_equal(keep({"steps": {"action": action}}, other), [True] * 4)
    assert all(get_spec(n).frame_filter is None for n in MAGIC_SOUP_PLUS if n != "droid")


def _droid_raw(file_path: bytes):
    spec = get_spec("droid")
    images = {
        k: np.array([k.encode()] * 2, object)
        for k in ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
    }
    steps = {"action_dict": {"gripper_position": np.zeros((2, 1))}, "observation": images}
    return spec, build_raw(spec, steps, {"episode_metadata": {"file_path": file_path}})


def test_droid_swap_is_deterministic_and_balanced():
    swapped = []
    for i in range(60):
        spec, raw = _droid_raw(b"/droid/ep%d.h5" % i)
        first, again = spec.standardize(raw), spec.standardize(raw)
        steps = first["steps"]
        assert list(steps["image_primary"]) == list(again["steps"]["image_primary"])
        assert {steps["image_primary"][0], steps["image_secondary"][0]} == {
            b"exterior_image_1_left",
            b"exterior_image_2_left",
        }
        assert steps["image_wrist"][0] == b"wrist_image_left"
        swapped.append(steps["image_primary"][0] == b"exterior_image_2_left")
    assert 15 < sum(swapped) < 45
    assert get_spec("droid_wipe").camera_swap is None


def test_specs_pickle():
    for name in ALL:
        spec = get_spec(name)
        assert pickle.loads(pickle.dumps(spec)).name == name
