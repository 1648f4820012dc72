"""synthesize_raw_steps -> standardize reproduces the plan's actions (after documented losses)."""

import numpy as np
import pytest
from _oxe_raw import from_synth, num_steps

from pipeline.data import schema
from pipeline.data.oxe import MAGIC_SOUP_PLUS, get_spec, list_datasets

TRAINABLE = [n for n in list_datasets() if get_spec(n).action_encoding == "EEF_POS"]
EXTRA_RAW_STEPS = {"bridge_orig": 2, "bridge_oxe": 2}


def _plan(t: int = 7, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    action = rng.uniform(-0.05, 0.05, (t, 7)).astype(np.float32)
    gripper = np.array([1, 1, 0, 0, 0, 1, 1][:t], np.float32)
    action[:, 6] = gripper
    return {
        "action": action,
        "proprio_xyz": rng.uniform(-0.5, 0.5, (t, 3)).astype(np.float32),
        "proprio_rpy": rng.uniform(-1, 1, (t, 3)).astype(np.float32),
        "gripper": gripper,
        "instruction": "Put the Red block in the bowl",
    }


def _paths(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _paths(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}"


def test_magic_soup_is_covered():
    assert set(MAGIC_SOUP_PLUS) <= set(TRAINABLE)


@pytest.mark.parametrize("name", TRAINABLE)
def test_roundtrip(name):
    spec = get_spec(name)
    plan = _plan()
    synth = spec.synthesize_raw_steps(plan, np.random.default_rng(1))
    steps_paths = set(_paths(spec.features["steps"]))
    assert set(_paths({k: v for k, v in synth.items() if k != "_episode"})) <= steps_paths
    assert set(synth.get("_episode", {})) <= set(spec.features)
    ep = spec.standardize(from_synth(spec, synth))
    assert schema.validate_episode(ep) == []
    expected = plan["action"].copy()
    for dim, value in spec.constant_action_dims.items():
        expected[:, dim] = value
    np.testing.assert_allclose(ep["steps"]["action"], expected, atol=2e-6)
    assert len(ep["steps"]["action"]) == len(plan["action"])
    assert list(ep["steps"]["language_instruction"]) == [plan["instruction"]] * len(plan["action"])
    raw_len = num_steps({k: v for k, v in synth.items() if k != "_episode"})
    assert raw_len == len(plan["action"]) + EXTRA_RAW_STEPS.get(name, 0)


def test_kuka_synthesis_is_zlib_and_successful():
    synth = get_spec("kuka").synthesize_raw_steps(_plan(), np.random.default_rng(0))
    assert synth["_episode"]["success"]
    assert synth["observation"]["gripper_closed"].dtype == object


def test_language_table_synthesis_uses_code_points():
    synth = get_spec("language_table").synthesize_raw_steps(_plan(), np.random.default_rng(0))
    points = synth["observation"]["instruction"]
    assert points.shape == (7, 512) and points.dtype == np.int32 and points[0, 0] == ord("P")


def test_bridge_synthesis_has_leading_zero_step():
    synth = get_spec("bridge_orig").synthesize_raw_steps(_plan(), np.random.default_rng(0))
    assert synth["action"].shape == (9, 7) and not synth["action"][0].any()


def test_rel2abs_synthesis_emits_events():
    synth = get_spec("fractal20220817_data").synthesize_raw_steps(_plan(), np.random.default_rng(0))
    np.testing.assert_array_equal(synth["action"]["gripper_closedness_action"][:, 0], [0, 0, 1, 0, 0, -1, 0])
