"""LaunchConfig: presets load, bad values give one-line UserErrors, the CLI keys are pinned."""

from __future__ import annotations

import glob
import os

import pytest
from launch_helpers import REPO

from launch.config import BACKENDS, LaunchConfig
from launch.trainer import check_train_overrides, train_overrides
from pipeline.cli import VERBS, main
from pipeline.config import flat_keys, load_config
from pipeline.errors import UserError

CONFIGS = sorted(glob.glob(os.path.join(REPO, "launch", "configs", "*.yaml")))


def test_presets_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"local_2node.yaml", "ray_local.yaml", "slurm_64xa100.yaml", "kuberay_64xa100.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_preset_loads_and_trainer_accepts_it(path):
    cfg = load_config(LaunchConfig, [], path)
    assert cfg.backend in BACKENDS
    check_train_overrides(cfg)  # every train entry is a valid TrainConfig key/value


def test_overrides_win_over_file():
    path = os.path.join(REPO, "launch", "configs", "slurm_64xa100.yaml")
    cfg = load_config(LaunchConfig, ["nodes=2", "slurm.time=00:10:00", "train=[stop.max_steps=7]"], path)
    assert (cfg.nodes, cfg.gpus_per_node, cfg.slurm.time, cfg.train) == (2, 8, "00:10:00", ["stop.max_steps=7"])


@pytest.mark.parametrize("override, key", [
    ("backend=mpi", "backend"),
    ("nodes=0", "nodes"),
    ("gpus_per_node=0", "gpus_per_node"),
    ("job_name=Bad_Name", "job_name"),
    ("train=[steps]", "train"),
    ("resume=", "resume"),
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
    with pytest.raises(UserError, match="run_dir"):
        load_config(LaunchConfig, ["backend=kuberay", "run_dir=runs/local"])


def test_cli_error_exit_code_and_one_line(capsys):
    assert main(["launch", "backend=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "backend" in err[0]


def test_bad_train_key_rejected_before_start(tmp_path, capsys):
    code = main(["launch", f"run_dir={tmp_path}", "train=[model.no_such_key=1]"])
    assert code == 2
    assert "model.no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "launch").exists()


def test_train_overrides_order():
    cfg = load_config(LaunchConfig, ["run_dir=gs://b/r", "mixture=bridge", "curated=gs://b/c",
                                     "train=[resume=none,seed=3]"])
    args = train_overrides(cfg)
    assert args == ["run_dir=gs://b/r", "resume=auto", "data.mixture=bridge", "data.data_root=gs://b/c",
                    "resume=none", "seed=3"]  # train entries last: they win


def test_verbs_registered():
    assert VERBS["launch"].config == "launch.config:LaunchConfig"
    assert VERBS["launch"].run == "launch.cli:run_launch"
    assert VERBS["doctor"].positional == ("config",)


def test_cli_keys_pinned():
    """Adding or renaming a launch key is an API change: update this list on purpose."""
    top = sorted({k.split(".")[0] for k, *_ in flat_keys(LaunchConfig)})
    assert top == ["backend", "curated", "dry_run", "gpus_per_node", "job_name", "kuberay", "mixture",
                   "nodes", "ray", "resume", "run_dir", "slurm", "torchrun", "train"]
