"""LaunchConfig: presets load, bad values give one-line UserErrors, the CLI keys are pinned."""

from __future__ import annotations

import glob
import os

import pytest
from launch_helpers import REPO

from launch.config import BACKENDS, LaunchConfig
from launch.trainer import train_overrides
from pipeline.cli import VERBS, main
from pipeline.config import flat_keys, load_config
from pipeline.errors import UserError
from pipeline.train.config import TrainConfig

CONFIGS = sorted(glob.glob(os.path.join(REPO, "launch", "configs", "*.yaml")))


def test_presets_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"local_2node.yaml", "ray_local.yaml", "slurm_64xa100.yaml", "kuberay_64xa100.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_preset_loads_and_trainer_accepts_it(path):
    cfg = load_config(LaunchConfig, [], path)
    assert cfg.backend in BACKENDS
    assert load_config(TrainConfig, train_overrides(cfg)) == cfg.train  # what every rank parses


def test_overrides_win_over_file():
    path = os.path.join(REPO, "launch", "configs", "slurm_64xa100.yaml")
    cfg = load_config(LaunchConfig, ["nodes=2", "slurm.time=00:10:00", "train.stop.max_steps=7"], path)
    assert (cfg.nodes, cfg.gpus_per_node, cfg.slurm.time, cfg.train.stop.max_steps) == (2, 8, "00:10:00", 7)
    assert cfg.train.checkpoint.save_every == 1000  # the file's other train keys stay


@pytest.mark.parametrize("override, key", [
    ("backend=mpi", "backend"),
    ("nodes=0", "nodes"),
    ("gpus_per_node=0", "gpus_per_node"),
    ("job_name=Bad_Name", "job_name"),
    ("train.stop.max_steps=0", "train.stop.max_steps"),
    ("train.resume=", "train.resume"),
    ("slurm.time=forever", "slurm.time"),
    ("slurm.port=70000", "slurm.port"),
    ("torchrun.rdzv_backend=etcd", "torchrun.rdzv_backend"),
    ("torchrun.rdzv_endpoint=nohostport", "torchrun.rdzv_endpoint"),
    ("ray.use_gpu=maybe", "ray.use_gpu"),
    ("kuberay.kind=Deployment", "kuberay.kind"),
    ("nodez=2", "nodez"),
    ("torchrun.node_rank=5", "torchrun.node_rank"),
])
def test_bad_values_are_one_line_user_errors(override, key):
    with pytest.raises(UserError) as e:
        load_config(LaunchConfig, [override])
    assert key in str(e.value) and "\n" not in str(e.value)


def test_one_node_of_several_needs_endpoint():
    with pytest.raises(UserError, match="torchrun.rdzv_endpoint"):
        load_config(LaunchConfig, ["nodes=2", "torchrun.node_rank=1"])


def test_kuberay_needs_shared_run_dir():
    with pytest.raises(UserError, match="train.run_dir"):
        load_config(LaunchConfig, ["backend=kuberay", "train.run_dir=runs/local"])


def test_cli_error_exit_code_and_one_line(capsys):
    assert main(["launch", "backend=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "backend" in err[0]


def test_bad_train_key_rejected_before_start(tmp_path, capsys):
    code = main(["launch", f"train.run_dir={tmp_path}", "train.model.no_such_key=1"])
    assert code == 2
    assert "model.no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "launch").exists()


def test_train_overrides_order():
    cfg = load_config(LaunchConfig, ["train.run_dir=gs://b/r", "train.data.mixture=bridge",
                                     "train.data.data_root=gs://b/c", "train.resume=none", "train.seed=3"])
    args = train_overrides(cfg)
    assert args == ["run_dir=gs://b/r", "resume=none", "seed=3", "data.data_root=gs://b/c",
                    "data.mixture=bridge"]  # run dir and resume first, then every non-default key
    assert load_config(TrainConfig, args) == cfg.train


def test_train_overrides_round_trip_awkward_values():
    cfg = load_config(LaunchConfig, ["train.data.tokenizer='true'", "train.data.mixture='1.0'",
                                     "train.data.stream.cameras=[primary,wrist]", "train.debug.hooks=a.b:c",
                                     "train.debug.hook_args.step=2", "train.optim.lr=1e-05"])
    assert load_config(TrainConfig, train_overrides(cfg)) == cfg.train
    assert cfg.train.data.tokenizer == "true" and cfg.train.debug.hook_args == {"step": 2}


def test_old_launch_keys_name_their_new_place():
    with pytest.raises(UserError, match=r"'mixture' \(now train.data.mixture\)"):
        load_config(LaunchConfig, ["mixture=bridge"])


def test_verbs_registered():
    assert VERBS["launch"].config == "launch.config:LaunchConfig"
    assert VERBS["launch"].run == "launch.cli:run_launch"
    assert VERBS["doctor"].config == "launch.config:LaunchConfig"
    assert VERBS["doctor"].positional == ("--config",)


def test_cli_keys_pinned():
    """Adding or renaming a launch key is an API change: update this list on purpose."""
    top = sorted({k.split(".")[0] for k, *_ in flat_keys(LaunchConfig)})
    assert top == ["backend", "doctor", "dry_run", "gpus_per_node", "job_name", "kuberay", "nodes", "ray", "slurm",
                   "torchrun", "train"]
