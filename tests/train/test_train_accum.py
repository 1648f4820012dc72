"""The real loop in process (1 rank): gradient accumulation (2 micro-batches of 4 == 1 batch of 8
over the same samples) and SIGTERM (checkpoint and stop after the current step)."""

from __future__ import annotations

import pytest
from train_helpers import BASE, losses

from pipeline.config import load_config
from pipeline.train.config import TrainConfig
from pipeline.train.main import train


def _run(run_dir, *args):
    cfg = load_config(TrainConfig, [*BASE, f"run_dir={run_dir}", "stop.max_steps=2", "checkpoint.enable=false",
                                    "resume=none", *args])
    return train(cfg)


def test_accumulation_matches_one_big_batch(tmp_path):
    a = _run(tmp_path / "a", "per_device_batch=4", "global_batch=8")
    b = _run(tmp_path / "b", "per_device_batch=8")
    assert a["steps"] == b["steps"] == 2 and a["last_checkpoint"] is None
    la, lb = losses(str(tmp_path / "a")), losses(str(tmp_path / "b"))
    assert la[1] == pytest.approx(lb[1], rel=1e-5)
    assert la[2] == pytest.approx(lb[2], rel=1e-4)


def test_sigterm_checkpoints_and_stops(tmp_path):
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    cfg = load_config(TrainConfig, [*BASE, f"run_dir={tmp_path}", "stop.max_steps=50", "checkpoint.save_every=100",
                                    "debug.term_at_step=2"])
    summary = train(cfg)
    assert summary["stop_reason"] == "signal" and summary["steps"] == 3
    assert summary["last_checkpoint"].endswith("step_000003")
    assert os.path.exists(os.path.join(summary["last_checkpoint"], "COMMIT"))
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored
