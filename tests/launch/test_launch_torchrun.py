"""torchrun backend: command lines (c10d / static / standalone) and a real local 2-node run."""

from __future__ import annotations

import json
import os

import pytest
from launch_helpers import read_steps

from launch.config import LaunchConfig
from launch.torchrun import node_commands, torchrun_argv
from pipeline.config import load_config


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_single_node_is_standalone():
    (argv,) = node_commands(load_config(LaunchConfig, ["gpus_per_node=4"]))
    assert "--standalone" in argv and _opt(argv, "--nproc-per-node") == "4"
    assert argv[argv.index("-m", 3) + 1] == "pipeline.train.main"


def test_local_rehearsal_starts_every_node_on_one_endpoint():
    cfg = load_config(LaunchConfig, ["nodes=3", "gpus_per_node=2", "job_name=rehearse"])
    cmds = node_commands(cfg)
    assert len(cmds) == 3
    assert {_opt(c, "--rdzv-endpoint") for c in cmds} == {_opt(cmds[0], "--rdzv-endpoint")}
    assert _opt(cmds[0], "--rdzv-endpoint").startswith("127.0.0.1:")
    assert [_opt(c, "--node-rank") for c in cmds] == ["0", "1", "2"]
    for c in cmds:
        assert (_opt(c, "--nnodes"), _opt(c, "--nproc-per-node"), _opt(c, "--rdzv-backend"),
                _opt(c, "--rdzv-id")) == ("3", "2", "c10d", "rehearse")


def test_real_cluster_node_joins_given_endpoint():
    cfg = load_config(LaunchConfig, ["nodes=4", "torchrun.node_rank=2", "torchrun.rdzv_endpoint=node0:29500"])
    (argv,) = node_commands(cfg)
    assert _opt(argv, "--rdzv-endpoint") == "node0:29500" and _opt(argv, "--node-rank") == "2"


def test_static_rendezvous_uses_master_addr():
    cfg = load_config(LaunchConfig, ["nodes=2", "torchrun.rdzv_backend=static"])
    argv = torchrun_argv(cfg, 1, "10.0.0.1:1234")
    assert (_opt(argv, "--master-addr"), _opt(argv, "--master-port"), _opt(argv, "--node-rank")) == \
        ("10.0.0.1", "1234", "1")
    assert "--rdzv-backend" not in argv


def test_dry_run_prints_and_writes_nothing(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["launch", "nodes=2", f"train.run_dir={tmp_path / 'run'}", "dry_run=true"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("torch.distributed.run" in line for line in lines)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_local_nodes_train_hybrid_and_checkpoint(two_node_run):
    """2 torchrun agents x 1 proc, c10d on 127.0.0.1, gloo, HSDP mesh (2 replicas x 1 shard)."""
    run_dir, proc = two_node_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "world=2 mesh=(2, 1)" in log  # replicate across the 2 nodes, shard within (1 proc)
    assert [r["step"] for r in read_steps(run_dir)] == [1, 2, 3, 4, 5]
    ckpts = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert "step_000005" in ckpts
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "step_000005", "COMMIT"))
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["world_size"] == 2
    # the launcher recorded what it ran
    assert os.path.exists(os.path.join(run_dir, "launch", "launch.yaml"))
    with open(os.path.join(run_dir, "launch", "torchrun.sh")) as f:
        script = f.read()
    assert script.count("--nnodes 2") == 2 and script.rstrip().endswith("wait")
