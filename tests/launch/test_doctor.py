"""``vla doctor``: every check on this machine (real gloo all_reduce, real storage probes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from launch_helpers import REPO

from launch import doctor
from launch.config import LaunchConfig
from launch.doctor import run_checks
from pipeline.cli import main
from pipeline.config import load_config

SYNTHETIC = "train.data.source=synthetic"


def _by_name(results):
    return {r.name: r for r in results}


@pytest.mark.slow
def test_all_checks_pass_through_the_2node_rendezvous(tmp_path, capsys):
    """collective=backend: the all_reduce runs under torchrun on both local "nodes" (c10d)."""
    code = main(["doctor", os.path.join(REPO, "launch", "configs", "local_2node.yaml"),
                 f"train.run_dir={tmp_path / 'run'}", "doctor.collective=backend", SYNTHETIC])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows == {"versions": "ok", "config": "ok", "backend": "ok", "devices": "ok", "collective": "ok", "storage": "ok",
                    "data": "skip", "disk": "ok"}
    assert "cpu only" in out and "all_reduce over 2 gloo rank(s) = 3 (expected) (torchrun" in out
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith(".doctor")]  # probe deleted


@pytest.mark.slow
def test_local_collective(tmp_path):
    cfg = load_config(LaunchConfig, [f"train.run_dir={tmp_path}", "doctor.collective_procs=2"])
    status, detail = doctor.check_collective(cfg)
    assert status == "ok" and "all_reduce over 2 gloo rank(s) = 3" in detail, detail


def test_collective_backend_needs_torchrun_or_ray():
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="doctor.collective"):
        load_config(LaunchConfig, ["backend=slurm", "doctor.collective=backend"])


def test_positional_config_with_overrides_on_top(tmp_path):
    path = os.path.join(REPO, "launch", "configs", "slurm_64xa100.yaml")
    from pipeline.config import load_argv

    cfg = load_argv(LaunchConfig, [path, "nodes=2", f"train.run_dir={tmp_path}"], positional=("--config",))
    assert (cfg.backend, cfg.nodes, cfg.gpus_per_node, cfg.train.run_dir) == ("slurm", 2, 8, str(tmp_path))
    assert cfg.slurm.partition == "a100"


@pytest.fixture()
def no_collective(monkeypatch):
    """Skip the (slow, already covered) collective check in the failure-path tests."""
    monkeypatch.setitem(doctor.CHECKS, "collective", lambda cfg: (doctor.SKIP, "not run in this test"))


def test_unwritable_run_dir_fails_with_exit_2(tmp_path, capsys, no_collective):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["doctor", f"train.run_dir={blocker}/run", SYNTHETIC])
    captured = capsys.readouterr()
    assert code == 2
    assert "storage" in captured.err and captured.err.count("\n") == 1


def test_gcs_run_dir_probe(gcs_bucket, no_collective):
    cfg = load_config(LaunchConfig, [f"train.run_dir={gcs_bucket}/run", SYNTHETIC])
    storage = _by_name(run_checks(cfg))["storage"]
    assert storage.status == "ok" and gcs_bucket in storage.detail


def _curate_fake(root, name: str, *, stats: bool = True, shard: bool = True) -> None:
    from pipeline.data.manifest import CuratedDataset

    d = Path(CuratedDataset(str(root), name).url)
    d.mkdir(parents=True)
    shard_name = f"{name}-train.tfrecord-00000-of-00001"
    if shard:
        (d / shard_name).write_bytes(b"")
    (d / "manifest.json").write_text(json.dumps({"shards": [{"file": shard_name}], "total_frames": 30}))
    if stats:
        (d / "dataset_statistics.json").write_text(json.dumps({name: {"action": {}}}))


@pytest.mark.parametrize("problem, expect", [(None, "ok"), ("stats", "FAIL"), ("shard", "FAIL"),
                                             ("uncurated", "FAIL")])
def test_data_check(tmp_path, no_collective, problem, expect):
    mixture = tmp_path / "mix.yaml"
    mixture.write_text("name: mix\ndatasets:\n  bridge_orig: 1.0\n  fractal20220817_data: 0.5\n")
    curated = tmp_path / "curated"
    _curate_fake(curated, "bridge_orig")
    if problem != "uncurated":
        _curate_fake(curated, "fractal20220817_data", stats=problem != "stats", shard=problem != "shard")
    cfg = load_config(LaunchConfig, [f"train.run_dir={tmp_path / 'run'}", f"train.data.mixture={mixture}",
                                     f"train.data.data_root={curated}"])
    data = _by_name(run_checks(cfg))["data"]
    assert data.status == expect, data.detail
    if expect == "FAIL":
        assert "fractal20220817_data" in data.detail


def test_backend_tool_missing(tmp_path, no_collective):
    cfg = load_config(LaunchConfig, ["backend=slurm", "slurm.sbatch=/nonexistent/sbatch",
                                     f"train.run_dir={tmp_path}", SYNTHETIC])
    assert _by_name(run_checks(cfg))["backend"].status == "FAIL"


def test_disk_threshold(tmp_path, no_collective):
    cfg = load_config(LaunchConfig, [f"train.run_dir={tmp_path}", "doctor.min_free_gb=1e9", SYNTHETIC])
    assert _by_name(run_checks(cfg))["disk"].status == "FAIL"


def test_versions_outside_the_tested_range_warn_but_pass(tmp_path, capsys, no_collective, monkeypatch):
    from pipeline import versions

    monkeypatch.setitem(versions.TESTED, "torch", ">=99")  # the installed torch is then "untested"
    code = main(["doctor", f"train.run_dir={tmp_path / 'run'}", SYNTHETIC])
    out = capsys.readouterr().out
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("versions"))
    assert row.split()[1] == "warn" and "torch" in row and "outside the tested range >=99" in row
