"""Metric sinks (pipeline/train/metric_sinks.py): a real `vla train` run logs the same scalars to
metrics.jsonl, TensorBoard and an offline Weights & Biases run; W&B errors are one-line user errors."""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import sys

import pytest
from train_helpers import BASE, check, run_cli

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.train.config import TrainConfig
from pipeline.train.metrics import _scalars


def read_wandb_run(path: str) -> tuple[dict[int, dict[str, float]], dict]:
    """(step -> logged scalars, run config) of an offline ``run-*.wandb`` file. The file is W&B's record log: a
    7-byte header, then 32 KiB blocks of records (crc32 u32, length u16, type u8: 1 full, 2 first,
    3 middle, 4 last) holding ``wandb_internal_pb2.Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", data[:7]
    block, pos, part, history, config = 32768, 7, b"", {}, {}
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the block end
            pos += left
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            kind_name = record.WhichOneof("record_type")
            if kind_name == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                history[int(items.pop("_step"))] = {k: v for k, v in items.items() if not k.startswith("_")}
            elif kind_name in ("run", "config"):  # the config given to wandb.init arrives with the run
                update = record.run.config.update if kind_name == "run" else record.config.update
                config.update({i.key: json.loads(i.value_json) for i in update})
    return history, config


def read_tensorboard(log_dir: str) -> dict[int, dict[str, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    out: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            out.setdefault(event.step, {})[tag] = event.value
    return out


def test_offline_wandb_run_has_the_same_scalars_as_jsonl_and_tensorboard(tmp_path):
    run_dir = str(tmp_path / "run")
    args = [a for a in BASE if not a.startswith("metrics.tensorboard")]
    proc = run_cli(["train", f"run_dir={run_dir}", *args, "stop.max_steps=3", "metrics.tensorboard=true",
                    "metrics.wandb=true", "metrics.wandb_mode=offline", "metrics.wandb_project=sinks-test",
                    "metrics.wandb_run_name=tiny"], timeout=240)
    check(proc)
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    names = sorted(records[0]["dataset_accuracy"] or {})
    expected = {r["step"]: dict(_scalars(r, names)) for r in records}
    assert sorted(expected) == [1, 2, 3] and "train/loss" in expected[1] and "train/lr" in expected[1]

    runs = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, os.listdir(run_dir)
    history, config = read_wandb_run(runs[0])
    assert history == expected  # same keys, same steps, the very same floats
    assert config["run_dir"] == run_dir and config["stop"]["max_steps"] == 3  # the run's (redacted) config

    board = read_tensorboard(os.path.join(run_dir, "tensorboard"))
    assert sorted(board) == sorted(expected)
    for step, scalars in expected.items():
        assert set(board[step]) == set(scalars)
        assert all(math.isclose(board[step][k], v, rel_tol=1e-6, abs_tol=1e-12) for k, v in scalars.items())


def test_bad_wandb_mode_is_a_config_error():
    with pytest.raises(UserError, match="metrics.wandb_mode='sometimes'"):
        load_config(TrainConfig, ["metrics.wandb_mode=sometimes"])


def test_missing_wandb_is_one_line(tmp_path, monkeypatch):
    from pipeline.train.metrics import MetricsConfig, MetricsLogger

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, as when not installed
    cfg = MetricsConfig(wandb=True, tensorboard=False, progress=False)
    with pytest.raises(UserError, match=r"needs the wandb package: pip install 'vla-pipeline\[train\]'"):
        MetricsLogger(cfg, run_dir=str(tmp_path), rank=0, start_step=0, max_steps=1, dataset_names=[])


def test_online_without_credentials_is_one_line(tmp_path, monkeypatch):
    from pipeline.train.metrics import MetricsConfig, MetricsLogger

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no stored login either
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = MetricsConfig(wandb=True, wandb_mode="online", tensorboard=False, progress=False)
    with pytest.raises(UserError, match="W&B could not start a run") as err:
        MetricsLogger(cfg, run_dir=str(tmp_path / "run"), rank=0, start_step=0, max_steps=1, dataset_names=[])
    assert "\n" not in str(err.value)
