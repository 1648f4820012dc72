"""``vla dataset register | list | show`` end to end: a made-up robot's raw RLDS data is written with the
fixture writer, registered from the command line, curated with ``vla curate`` (real Ray) and checked
against a by-hand standardization of the raw episodes. Also ``make_demo_robot_dataset``."""

from __future__ import annotations

import os

import numpy as np
import pytest

import pipeline  # noqa: F401
from pipeline import cli, fs
from pipeline.data.fixtures.datasets import write_fixture_dataset
from pipeline.data.io.builder import open_builder
from pipeline.data.io.rlds_reader import read_episodes
from pipeline.data.manifest import MANIFEST_NAME, CuratedDataset, curated_features
from pipeline.data.oxe import get_spec, list_datasets
from pipeline.data.oxe import transforms as tf
from pipeline.data.oxe import user_registry as ur
from pipeline.errors import UserError

ROBOT = "zeta_bot"
# The robot as recorded (NOT registered): 8-D action = xyz delta, quaternion delta, gripper 1 = CLOSED;
# odd camera names, language under steps/task.
TRUTH = """
name: zeta_bot
features:
  episode_metadata: {file_path: Text, success: bool}
  steps:
    action: Tensor(8,) float32
    is_first: bool
    is_last: bool
    is_terminal: bool
    task: Text
    observation:
      cam_front: Image(32,32,3) uint8 jpeg
      cam_hand: Image(32,32,3) uint8 png
      joint_state: Tensor(6,) float32
      ee_pose: Tensor(7,) float32
cameras: {primary: cam_front, wrist: cam_hand}
state_keys: [ee_pose]
state_encoding: POS_QUAT
language_key: steps/task
action: {steps: [{op: quat_to_euler, at: 3}], gripper: inverted}
"""
REGISTER = [
    "cameras.primary=cam_front", "cameras.wrist=cam_hand", "state_keys=[ee_pose,joint_state]",
    "state_encoding=POS_QUAT", "language_key=steps/task", "action.steps=[{op: quat_to_euler, at: 3}]",
    "action.gripper=inverted", "episode_filters=[{op: success, key: episode_metadata/success}]",
]


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> str:
    """The made-up robot's raw TFDS builder dir, written by the fixture/RLDS writer."""
    tmp = tmp_path_factory.mktemp("zeta")
    truth = ur.spec_from_entry(ur.parse_entry(TRUTH, str(tmp / "truth" / f"{ROBOT}.yaml")))
    root = str(tmp / "raw")
    write_fixture_dataset(truth, root, episodes=6, steps=(5, 8), shards=2, seed=3)
    return root


@pytest.fixture()
def registry(tmp_path, monkeypatch) -> str:
    reg = tmp_path / "registry"
    monkeypatch.setenv(ur.ENV_VAR, str(reg))
    return str(reg)


def _vla(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _register(capsys, raw_root, registry, *extra):
    return _vla(capsys, "dataset", "register", f"src={raw_root}/{ROBOT}", f"out={registry}", *REGISTER, *extra)


def test_register_list_show(capsys, raw_root, registry):
    code, out, err = _register(capsys, raw_root, registry)
    assert code == 0, err
    path = os.path.join(registry, f"{ROBOT}.yaml")
    assert f"registered {ROBOT} 1.0.0 -> {path}" in out and "gripper values [" in out
    assert ROBOT in list_datasets() and get_spec(ROBOT).state_size == 13
    code, out, _ = _vla(capsys, "dataset", "list", "user_only=true")
    assert code == 0 and ROBOT in out and "acme_arm_demo" in out and path in out
    code, out, _ = _vla(capsys, "dataset", "show", ROBOT)
    assert code == 0 and "gripper: inverted" in out and "cam_hand" in out
    code, _, err = _register(capsys, raw_root, registry)  # no overwrite without force
    assert code == 2 and err.startswith("error: ") and "force=true" in err and err.count("\n") == 1
    code, _, err = _register(capsys, raw_root, registry, "force=true")
    assert code == 0, err


@pytest.mark.parametrize("extra,words", [
    (["cameras.primary=cam_top"], "cameras.primary: 'cam_top' is not an image feature"),
    (["action.steps=[{op: quat2euler}]"], "unknown building block 'quat2euler'; known: select,"),
    (["action.steps=[]"], "the steps produce 8 action columns, expected 7"),
    (["action.steps=[{op: select, dims: [0,1,2,3,4,5,7]}]", "action.gripper=relative", "name=bridge_orig"],
     "built-in names cannot be shadowed"),
])
def test_register_errors_write_nothing(capsys, raw_root, registry, extra, words):
    code, out, err = _register(capsys, raw_root, registry, *extra)
    assert code == 2 and words in err and err.count("\n") == 1, err
    assert not os.path.exists(registry) or not os.listdir(registry)


def test_wrong_but_valid_convention_is_registered(capsys, raw_root, registry):
    """A wrong-but-valid gripper convention still passes the [0, 1] gripper check; only shapes fail."""
    code, _, err = _register(capsys, raw_root, registry, "action.steps=[{op: select, dims: [0,1,2,3,4,5,6]}]",
                             "action.gripper=signed")
    assert code == 0, err


def test_register_checks_the_data(capsys, raw_root, registry):
    # doubling the raw "closed" column before the inversion gives gripper -1 on closed steps: refused
    code, _, err = _register(capsys, raw_root, registry, "check_episodes=6", "action.steps=[{op: quat_to_euler, at: 3}, "
                             "{op: scale, dims: [6], factor: 2.0}]")
    assert code == 2 and "outside [0, 1]" in err and "action.gripper" in err, err
    assert not os.path.exists(os.path.join(registry, f"{ROBOT}.yaml"))


def test_infer_from_builder_dir(tmp_path, raw_root):
    path = tmp_path / f"{ROBOT}.yaml"
    path.write_text(f"name: {ROBOT}\ninfer_from: {raw_root}/{ROBOT}\ncameras: {{primary: cam_front}}\n"
                    "state_keys: [null]\nstate_encoding: NONE\nlanguage_key: steps/task\n"
                    "action: {steps: [quat_to_euler], gripper: inverted}\n")
    entry = ur.load_entry(str(path))
    assert entry["splits"] == {"train": 6} and entry["features"]["steps"]["observation"]["cam_hand"].startswith("Image")


@pytest.mark.slow
def test_curate_registered_dataset(capsys, raw_root, registry, tmp_path, ray_session):
    assert _register(capsys, raw_root, registry)[0] == 0
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(f"name: zeta\ndatasets:\n  {ROBOT}: 1.0\n")
    out = str(tmp_path / "curated")
    code, stdout, err = _vla(capsys, "curate", f"mixture={mixture}", f"source={raw_root}", f"out={out}", "progress=false")
    assert code == 0, err
    manifest = CuratedDataset(out, ROBOT).read_manifest()
    # by hand: the raw episodes, standardized with numpy only, match the curated actions (by episode id);
    # the registered success filter drops failures before statistics, unlabeled ones are dropped after
    info = open_builder(f"{raw_root}/{ROBOT}")
    expected, successful = {}, 0
    for shard in info.splits["train"]:
        for raw in read_episodes(shard.url, info.features):
            if not raw["episode_metadata"]["success"]:
                continue
            successful += 1
            if not any(raw["steps"]["task"]):
                continue
            a = raw["steps"]["action"]
            expected[raw["episode_metadata"]["file_path"].decode()] = np.concatenate(
                [a[:, :3], tf.quat_to_euler(a[:, 3:7]), 1.0 - a[:, 7:8]], 1)
    assert 0 < len(expected) < successful < 6  # the fixture has failed and unlabeled episodes
    assert manifest["total_episodes"] == len(expected) and manifest["proprio_dim"] == 13
    stats = fs.read_json(fs.join(CuratedDataset(out, ROBOT).url, "dataset_statistics.json"))[ROBOT]
    assert stats["num_trajectories"] == successful and stats["action"]["mask"] == [True] * 6 + [False]
    features = curated_features(manifest["proprio_dim"])
    seen = 0
    for shard in manifest["shards"]:
        for ep in read_episodes(fs.join(CuratedDataset(out, ROBOT).url, shard["file"]), features):
            want = expected[ep["episode_metadata"]["episode_id"].decode()]
            np.testing.assert_allclose(ep["steps"]["action"], want, atol=1e-6)
            assert set(np.unique(ep["steps"]["action"][:, 6])) <= {0.0, 1.0}
            assert ep["steps"]["observation"]["image_wrist"][0][:4] == b"\x89PNG"
            seen += 1
    assert seen == len(expected)
    # editing the entry changes the curation key: the dataset is curated again, not reused
    assert "curated" in stdout
    assert _register(capsys, raw_root, registry, "force=true", "state_keys=[ee_pose]")[0] == 0
    code, stdout, err = _vla(capsys, "curate", f"mixture={mixture}", f"source={raw_root}", f"out={out}", "progress=false")
    assert code == 0 and CuratedDataset(out, ROBOT).read_manifest()["proprio_dim"] == 7, err


@pytest.mark.slow
def test_make_demo_robot_dataset(tmp_path, ray_session):
    from pipeline.data.fixtures.byod import make_demo_robot_dataset

    paths = make_demo_robot_dataset(str(tmp_path / "demo"), episodes=4, image_size=32, steps="5-7")
    assert paths["dataset"] == "acme_arm_demo" and paths["episodes"] == {"train": 3, "val": 1}
    manifest = fs.read_json(fs.join(paths["curated_dir"], MANIFEST_NAME))
    q = fs.read_json(fs.join(paths["curated_dir"], "quarantine.json"))
    assert manifest["total_episodes"] == paths["curated_episodes"]  # the source has a val split: all of train
    assert manifest["total_episodes"] + manifest["validation"]["total_episodes"] == 4 - q["episodes_dropped"]
    assert fs.exists(fs.join(paths["curated_dir"], "dataset_statistics.json"))
    again = make_demo_robot_dataset(str(tmp_path / "again"), episodes=4, image_size=32, steps="5-7", curate=False)
    assert again["curated"] == ""
    names = sorted(os.listdir(again["raw_dir"]))
    assert names == sorted(os.listdir(paths["raw_dir"]))
    shard = next(n for n in names if ".tfrecord" in n)
    assert fs.read_bytes(fs.join(again["raw_dir"], shard)) == fs.read_bytes(fs.join(paths["raw_dir"], shard))


def test_register_from_gcs(capsys, raw_root, registry, gcs_bucket):
    local = os.path.join(raw_root, ROBOT, "1.0.0")
    for fname in os.listdir(local):
        with open(os.path.join(local, fname), "rb") as f:
            fs.write_bytes(fs.join(gcs_bucket, ROBOT, "1.0.0", fname), f.read())
    code, out, err = _vla(capsys, "dataset", "register", f"src={gcs_bucket}/{ROBOT}", f"out={registry}", *REGISTER)
    assert code == 0 and "checked 1 episode(s)" in out, err
    assert ur.load_entry(os.path.join(registry, f"{ROBOT}.yaml"))["source"] == fs.join(gcs_bucket, ROBOT, "1.0.0")


def test_map_task_needs_only_the_entry(tmp_path, raw_root, monkeypatch):
    """A Ray worker that cannot see the YAML (remote cluster) curates from the entry the driver sends."""
    from pipeline.data.curate.splits import TRAIN, SplitRole
    from pipeline.data.curate.tasks import MapJob, run_map

    entry = ur.parse_entry(TRUTH, str(tmp_path / f"{ROBOT}.yaml"))
    monkeypatch.delenv(ur.ENV_VAR, raising=False)
    with pytest.raises(UserError):
        get_spec(ROBOT)
    info = open_builder(f"{raw_root}/{ROBOT}")
    shard = info.splits["train"][0]
    job = MapJob(dataset=ROBOT, shard_url=shard.url, shard_index=0, role=SplitRole("train", TRAIN),
                 source_features=info.features, parts=str(tmp_path / "parts"), num_buckets=1, seed=0, run_key="k",
                 proprio_dim=7, spec_entry=entry)
    marker = run_map(job)
    q = marker["quarantine"]
    assert marker["episodes"] + q["episodes_dropped"] == shard.num_episodes and marker["episodes"] > 0
    assert set(q["reasons"]) <= {"empty_instruction"}  # the fixture's unlabeled episodes


def test_default_registry_dir(tmp_path, monkeypatch):
    """Without out=: the first VLA_DATASET_REGISTRY folder; else the checkout's registry; never
    the files of an installed package (one line naming the variable to set)."""
    from pipeline.data.oxe.dataset_cli import default_registry_dir

    monkeypatch.setenv(ur.ENV_VAR, os.pathsep.join([str(tmp_path / "one.yaml"), str(tmp_path / "mine")]))
    assert default_registry_dir() == str(tmp_path / "mine")
    monkeypatch.delenv(ur.ENV_VAR)
    assert default_registry_dir() == ur.REGISTRY_DIR
    installed = str(tmp_path / "lib" / "python3.11" / "site-packages" / "pipeline" / "dataset_mixtures" / "registry")
    monkeypatch.setattr(ur, "REGISTRY_DIR", installed)
    with pytest.raises(UserError, match=f"{ur.ENV_VAR} is not set.*belongs to the installed package") as e:
        default_registry_dir()
    assert "\n" not in str(e.value)
