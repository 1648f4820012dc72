"""`vla inspect`: per-dataset table of fixture data read back through the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main

NAMES = ["bridge_orig", "kuka", "language_table"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect")
    assert main(["fixture", f"out={out}", f"datasets=[{','.join(NAMES)}]", "episodes=3", "steps=8-10"]) == 0
    return out


def test_table_lists_every_dataset(data_root, capsys):
    capsys.readouterr()
    assert main(["inspect", f"data={data_root}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["dataset", "ver", "splits"]
    rows = {line.split()[0]: line for line in out[1:-1]}
    assert sorted(rows) == sorted(NAMES)
    assert "train:2,val:1" in rows["bridge_orig"]
    assert " p-- " in rows["kuka"] and " ok " in rows["kuka"]
    assert "block" in rows["language_table"]  # language example
    assert out[-1].startswith("total: 3 datasets, 9 episodes") and "0 invalid" in out[-1]


def test_explicit_subset(data_root, capsys):
    capsys.readouterr()
    assert main(["inspect", f"data={data_root}", "datasets=[kuka]", "max_episodes=1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("kuka") and out[-1].startswith("total: 1 datasets, 1 episodes")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_missing_data_dir_exits_2(tmp_path, capsys):
    assert main(["inspect", f"data={tmp_path / 'nope'}"]) == 2
    assert "not found" in _one_error_line(capsys)


def test_missing_dataset_exits_2(data_root, capsys):
    assert main(["inspect", f"data={data_root}", "datasets=[bridge_orig,droid]"]) == 2
    assert "droid" in _one_error_line(capsys)


def test_corrupt_shard_exits_2(data_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(data_root / "kuka", root / "kuka")
    shard = sorted((root / "kuka").rglob("*.tfrecord-*"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    assert main(["inspect", f"data={root}"]) == 2
    assert "kuka" in _one_error_line(capsys)
