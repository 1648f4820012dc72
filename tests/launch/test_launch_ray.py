"""Ray backend: TorchTrainer wiring, and a real 2-worker run that survives an injected crash."""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import pytest
from launch_helpers import read_steps, train_list, vla

from launch.config import LaunchConfig
from pipeline.config import load_config


def test_trainer_wiring(tmp_path):
    from ray.train.torch import TorchTrainer

    from launch.ray_train import build_trainer, train_loop

    cfg = load_config(LaunchConfig, ["backend=ray", "nodes=2", "gpus_per_node=2", f"train.run_dir={tmp_path}",
                                     "ray.use_gpu=false", "ray.max_failures=4", "train.seed=5"])
    trainer = build_trainer(cfg)
    assert isinstance(trainer, TorchTrainer)
    assert trainer.train_loop_per_worker is train_loop
    assert trainer.scaling_config.num_workers == 4 and trainer.scaling_config.use_gpu is False
    assert trainer.run_config.failure_config.max_failures == 4
    assert trainer.run_config.storage_path == os.path.join(str(tmp_path), "ray")
    overrides = trainer.train_loop_config["overrides"]
    assert overrides[:2] == [f"run_dir={tmp_path}", "resume=auto"] and overrides[-1] == "seed=5"


def test_gs_storage_goes_through_fsspec(gcs_bucket):
    import pyarrow.fs

    from launch.ray_train import _storage

    cfg = load_config(LaunchConfig, ["backend=ray", f"train.run_dir={gcs_bucket}/run"])
    path, filesystem = _storage(cfg)
    assert path == f"{gcs_bucket[len('gs://'):]}/run/ray"
    assert isinstance(filesystem, pyarrow.fs.PyFileSystem)


def test_dry_run(capsys):
    from pipeline.cli import main

    assert main(["launch", "backend=ray", "nodes=2", "dry_run=true"]) == 0
    assert "TorchTrainer(num_workers=2" in capsys.readouterr().out


@pytest.fixture()
def ray_tmp():
    """Ray's session dir under a short temp path (unix socket paths are limited), removed after."""
    path = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    yield {"RAY_TMPDIR": path, "RAY_ADDRESS": ""}
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_worker_crash_restarts_and_resumes_without_losing_steps(tmp_path, ray_tmp, two_node_run):
    """Rank 1 exits hard after step 3 (checkpoint at step 2). Ray restarts the worker group, the
    trainer resumes from step 2 (resume=auto) and the metric log equals an uninterrupted run's."""
    ref_dir, ref_proc = two_node_run
    assert ref_proc.returncode == 0, ref_proc.stderr[-2000:]
    run_dir = str(tmp_path / "run")
    proc = vla(["launch", "--config", "launch/configs/ray_local.yaml", f"train.run_dir={run_dir}", "nodes=1",
                "gpus_per_node=2", "ray.num_cpus=2", "ray.max_failures=2", "ray.use_gpu=false",
                *train_list(["fsdp.mode=hybrid", "debug.crash_at_step=3", "debug.crash_rank=1"])],
               env=ray_tmp)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert os.path.exists(os.path.join(run_dir, ".crashed_3"))  # the fault really fired
    assert "resumed from" in log and "step_000002" in log
    got, ref = read_steps(run_dir), read_steps(ref_dir)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]  # none lost, none repeated
    for a, b in zip(got, ref):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a["step"], a["loss"], b["loss"])
