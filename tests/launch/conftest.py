"""Fixtures for launch tests: a tiny 2-node torchrun run (shared reference) and a local SLURM."""

from __future__ import annotations

import os
import shutil

import pytest
from launch_helpers import SlurmCluster, train_list, vla


@pytest.fixture(scope="session")
def two_node_run(tmp_path_factory):
    """The local 2-node torchrun rehearsal (hybrid mesh, gloo), uninterrupted: run once per session."""
    run_dir = str(tmp_path_factory.mktemp("two_node") / "run")
    proc = vla(["launch", "--config", "launch/configs/local_2node.yaml", f"train.run_dir={run_dir}",
                *train_list(["fsdp.mode=hybrid"])])
    return run_dir, proc


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0 or not all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "scontrol")):
        pytest.skip("local SLURM needs root and slurm-wlm (apt-get install slurm-wlm)")
    cluster = SlurmCluster()
    try:
        cluster.start()
    except RuntimeError as e:
        cluster.stop()
        pytest.skip(str(e))
    yield cluster
    cluster.stop()
