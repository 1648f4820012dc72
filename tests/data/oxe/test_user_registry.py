"""User-registered datasets: YAML schema + validation messages, lookup through get_spec/list_datasets,
the building blocks (forward/inverse), and standardization of made-up robots (no Ray, no TF)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import yaml
from _oxe_raw import build_raw, from_synth

from pipeline.data import schema
from pipeline.data.oxe import get_spec, list_datasets
from pipeline.data.oxe import transforms as tf
from pipeline.data.oxe import user_blocks as ub
from pipeline.data.oxe import user_registry as ur
from pipeline.errors import UserError

EXAMPLE = "acme_arm_demo"

BASE = {
    "name": "my_bot",
    "features": {
        "episode_metadata": {"file_path": "Text", "success": "bool"},
        "steps": {
            "action": "Tensor(8,) float32",
            "is_first": "bool", "is_last": "bool", "is_terminal": "bool",
            "language_instruction": "Text",
            "observation": {"cam_front": "Image(32,32,3) uint8 jpeg", "cam_hand": "Image(32,32,3) uint8 jpeg",
                            "joint_state": "Tensor(6,) float32", "ee_pose": "Tensor(7,) float32"},
            "robot_state": "Tensor(7,) float32",
        },
    },
    "cameras": {"primary": "cam_front", "wrist": "cam_hand"},
    "state_keys": ["ee_pose", "joint_state[0:2]", None],
    "state_encoding": "POS_QUAT",
    "action": {"steps": [{"op": "quat_to_euler", "at": 3}], "gripper": "inverted"},
}


def _entry(tmp_path, name="my_bot", **changes) -> str:
    data = {**BASE, "name": name, **changes}
    data = {k: v for k, v in data.items() if v is not ...}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _plan(t=7, seed=0):
    rng = np.random.default_rng(seed)
    action = rng.uniform(-0.05, 0.05, (t, 7)).astype(np.float32)
    action[:, 6] = np.array([1, 1, 0, 0, 0, 1, 1][:t], np.float32)
    return {"action": action, "proprio_xyz": rng.uniform(-0.5, 0.5, (t, 3)).astype(np.float32),
            "proprio_rpy": rng.uniform(-1, 1, (t, 3)).astype(np.float32), "gripper": action[:, 6].copy(),
            "instruction": "pick up the red block"}


# ------------------------------------------------------------------------------ lookup
def test_example_entry_is_registered():
    assert EXAMPLE in list_datasets() and EXAMPLE not in list_datasets(user=False)
    assert len(list_datasets()) == len(list_datasets(user=False)) + len(ur.user_datasets())
    spec = get_spec(EXAMPLE)
    assert spec.cameras == {"primary": "cam_front", "secondary": None, "wrist": "cam_hand"}
    assert spec.state_size == 8 and spec.action_encoding == "EEF_POS"
    assert pickle.loads(pickle.dumps(spec)).name == EXAMPLE
    assert ur.entry_hash("bridge_orig") == () and ur.entry_hash(EXAMPLE)
    assert ur.user_entry("bridge_orig") is None


def test_env_registry_dir(tmp_path, monkeypatch):
    _entry(tmp_path)
    with pytest.raises(UserError, match="unknown OXE dataset 'my_bot'"):
        get_spec("my_bot")
    monkeypatch.setenv(ur.ENV_VAR, str(tmp_path))
    assert "my_bot" in list_datasets()
    assert get_spec("my_bot").state_size == 7 + 2 + 1
    with pytest.raises(UserError, match="did you mean 'my_bot'"):
        get_spec("my_bto")


def test_builtin_names_cannot_be_shadowed(tmp_path, monkeypatch):
    path = _entry(tmp_path, name="bridge_orig")
    with pytest.raises(UserError, match=r"bridge_orig.yaml:1: name: 'bridge_orig' is a built-in OXE dataset"):
        ur.load_entry(path)
    monkeypatch.setenv(ur.ENV_VAR, path)
    assert get_spec("bridge_orig").transform is not None and ur.user_entry("bridge_orig") is None


def test_same_name_twice_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _entry(tmp_path / "a")
    _entry(tmp_path / "b")
    monkeypatch.setenv(ur.ENV_VAR, f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    with pytest.raises(UserError, match="defined twice"):
        get_spec("my_bot")


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("changes,key,words", [
    ({"action": {"steps": [{"op": "quat2euler"}]}}, "action.steps[0]", "unknown building block 'quat2euler'; known: select,"),
    ({"cameras": {"primary": "cam_top"}}, "cameras.primary", "expected one of cam_front, cam_hand or null"),
    ({"cameras": {"left": "cam_front"}}, "cameras.left", "unknown camera slot"),
    ({"cameras": {"wrist": "cam_hand"}}, "cameras.primary", "required"),
    ({"state_keys": ["ee_pos"]}, "state_keys[0]", "expected one of ee_pose, joint_state"),
    ({"state_keys": ["joint_state[2:9]"]}, "state_keys[0]", "outside the 6 values"),
    ({"action": {"gripper": "relative"}}, "action", "produce 8 action columns, expected 7"),
    ({"action": {"gripper": "sideways", "steps": ["quat_to_euler"]}}, "action.gripper", "expected one of absolute,"),
    ({"action": {"steps": [{"op": "scale", "factor": 2}]}}, "action.steps[0]", "scale needs parameter(s) dims"),
    ({"action": {"steps": [{"op": "quat_to_euler", "at": "3"}]}}, "action.steps[0].at", "expected int"),
    ({"action": {"steps": [{"op": "quat_to_euler", "axis": 1}]}}, "action.steps[0].axis", "no parameter 'axis'"),
    ({"action": {"steps": [{"op": "quat_to_euler", "at": 6}]}}, "action.steps[0]", "at=6: needs 4 columns"),
    ({"action": {"key": "act", "steps": ["quat_to_euler"]}}, "action.key", "expected one of action, observation/joint_state"),
    ({"action": {"steps": [{"op": "bridge_relabel", "state": "observation/nope"}, "quat_to_euler"]}},
     "action.steps[0]", ">= 6 values"),
    ({"state_encoding": "EULER"}, "state_encoding", "expected one of NONE, POS_EULER"),
    ({"language_key": "steps/instruction"}, "language_key", "expected one of steps/language_instruction"),
    ({"episode_filters": [{"op": "success", "key": "steps/is_last"}]}, "episode_filters[0].key", "episode-level"),
    ({"episode_filters": [{"op": "rating"}]}, "episode_filters[0]", "one of success"),
    ({"colour": "red"}, "colour", "unknown key; expected one of name, version"),
    ({"features": ...}, "features", "exactly one of 'features'"),
    ({"infer_from": "/nonexistent/x"}, "features", "exactly one of 'features'"),
    ({"version": "1.0"}, "version", "MAJOR.MINOR.PATCH"),
    ({"control_hz": -3}, "control_hz", "positive number"),
])
def test_validation_errors_name_file_and_key(tmp_path, changes, key, words):
    path = _entry(tmp_path, **changes)
    with pytest.raises(UserError) as info:
        ur.load_entry(path)
    message = str(info.value)
    assert message.startswith(f"{path}:") and f": {key}: " in message and words in message, message
    assert "\n" not in message


def test_name_must_match_file(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({**BASE}))
    with pytest.raises(UserError, match="name: 'my_bot' differs from the file name 'other'"):
        ur.load_entry(str(path))


def test_malformed_yaml(tmp_path):
    path = tmp_path / "my_bot.yaml"
    path.write_text("name: my_bot\ncameras: {primary: [\n")
    with pytest.raises(UserError, match=r"my_bot.yaml:\d+: malformed YAML"):
        ur.load_entry(str(path))


# ------------------------------------------------------------------------------ standardization
def test_made_up_robot_standardizes_by_hand(tmp_path):
    spec = ur.spec_from_entry(ur.load_entry(_entry(tmp_path)))
    rng = np.random.default_rng(3)
    t = 6
    quat = tf.euler_to_quat(rng.uniform(-0.3, 0.3, (t, 3)))
    closed = np.array([0, 0, 1, 1, 0, 0], np.float32)  # raw: 1 = closed
    action = np.concatenate([rng.normal(size=(t, 3)), quat, closed[:, None]], 1).astype(np.float32)
    obs = {"ee_pose": rng.normal(size=(t, 7)).astype(np.float32), "joint_state": rng.normal(size=(t, 6)).astype(np.float32)}
    raw = build_raw(spec, {"action": action, "observation": obs,
                           "language_instruction": np.full(t, b"stack the cups", object)})
    ep = spec.standardize(raw)
    assert schema.validate_episode(ep) == []
    want = np.concatenate([action[:, :3], tf.quat_to_euler(quat), 1 - closed[:, None]], 1)
    np.testing.assert_allclose(ep["steps"]["action"], want, atol=1e-6)
    np.testing.assert_allclose(ep["steps"]["proprio"], np.concatenate(
        [obs["ee_pose"], obs["joint_state"][:, :2], np.zeros((t, 1))], 1))
    assert list(ep["steps"]["language_instruction"]) == ["stack the cups"] * t


def test_relative_gripper_and_success_filter(tmp_path):
    entry = ur.load_entry(_entry(tmp_path, action={"steps": [{"op": "select", "dims": [0, 1, 2, 3, 4, 5, 7]}],
                                                   "gripper": "relative"},
                                 episode_filters=[{"op": "success", "key": "episode_metadata/success"}]))
    spec = ur.spec_from_entry(entry)
    rel = np.array([0, 1, 0, 0, -1, 0], np.float32)  # close at 1, open at 4
    action = np.zeros((6, 8), np.float32)
    action[:, 7] = rel
    raw = build_raw(spec, {"action": action}, {"episode_metadata": {"success": np.bool_(False)}})
    np.testing.assert_array_equal(spec.standardize(raw)["steps"]["action"][:, 6], [1, 0, 0, 0, 1, 1])
    (reason, keep), = spec.episode_filters
    assert reason == "success" and not keep(raw)
    raw["episode_metadata"]["success"] = np.bool_(True)
    assert keep(raw)


@pytest.mark.parametrize("steps,gripper,features_action", [
    ([], "relative", "Tensor(7,) float32"),
    ([{"op": "quat_to_euler", "at": 3}], "inverted_signed", "Tensor(8,) float32"),
    ([{"op": "axis_angle_to_euler"}, {"op": "scale", "dims": [0, 1, 2], "factor": 0.01}], "continuous",
     "Tensor(7,) float32"),
    ([{"op": "zero_pad_rot"}], "signed", "Tensor(4,) float32 zlib"),
    ([{"op": "drop_first_step"}, {"op": "pad_to7"}], "absolute", "Tensor(4,) float32"),
    ([{"op": "select", "dims": [0, 1, 2, 3, 4, 5, 6]}, {"op": "wrap_angle"}, "drop_first_step"], "absolute",
     "Tensor(9,) float32"),
    ([{"op": "bridge_relabel", "state": "robot_state"}], "absolute", "Tensor(7,) float32"),
])
def test_blocks_roundtrip(tmp_path, steps, gripper, features_action):
    features = {**BASE["features"], "steps": {**BASE["features"]["steps"], "action": features_action}}
    spec = ur.spec_from_entry(ur.load_entry(_entry(tmp_path, features=features,
                                                   action={"steps": steps, "gripper": gripper})))
    plan = _plan()
    ep = spec.standardize(from_synth(spec, spec.synthesize_raw_steps(plan, np.random.default_rng(1))))
    assert schema.validate_episode(ep) == []
    want = plan["action"].copy()
    for dim, value in spec.constant_action_dims.items():
        want[:, dim] = value
    np.testing.assert_allclose(ep["steps"]["action"], want, atol=2e-6)
    assert list(ep["steps"]["language_instruction"]) == [plan["instruction"]] * len(want)


def test_every_block_is_documented():
    assert set(ub.BLOCKS) >= {"select", "quat_to_euler", "rel2abs_gripper", "invert", "clip01", "binarize_backfill",
                              "bridge_relabel", "zero_pad_rot", "pad_to7"}
    lines = ub.block_help().splitlines()
    assert len(lines) == len(ub.BLOCKS) and all(":" in line for line in lines)
    for ops in ub.GRIPPER_CONVENTIONS.values():
        assert all(ub.BLOCKS[op].gripper for op in ops)


def test_dump_entry_roundtrips(tmp_path):
    entry = ur.load_entry(_entry(tmp_path))
    again = ur.parse_entry(ur.dump_entry(entry), entry["_file"])
    assert again == entry
