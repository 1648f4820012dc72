"""Fault scenario ``checkpoint_write_kill`` (quick): kill -9 a training process inside a checkpoint save (local
and gs:// on the emulator), resume=auto; plus the save-fault hook and the partial-state helper."""

from __future__ import annotations

import logging
import os

import pytest

from tests.faults.suite.core import FaultContext, run_scenario


@pytest.mark.slow
def test_checkpoint_write_kill_quick(tmp_path):
    result = run_scenario("checkpoint_write_kill", FaultContext(str(tmp_path), quick=True, log=lambda m: None))
    assert result.ok, (result.failures, result.details)
    trials = result.details["trials"]
    assert [t["storage"] for t in trials] == ["local", "gs"]
    for t in trials:
        assert t["after_kill"] == "partial" and t["partial_handling"] == "reported+removed"
        assert t["resumed_from_step"] == t["fault_step"] - 2 and t["fault_step_after_resume"] == "committed"


def test_save_fault_hook_fires_once_in_its_step_phase_and_rank(tmp_path, caplog):
    from pipeline.train.hooks import RunInfo
    from tests.faults.suite.hooks import SaveFault

    hook = SaveFault(step=4, fault="pause", phase="before_commit", pause_s=0.0)
    hook.start(RunInfo(rank=0, world_size=2, run_dir=str(tmp_path)))
    other_rank = SaveFault(step=4, fault="pause", phase="before_commit", pause_s=0.0, rank=1)
    other_rank.start(RunInfo(rank=0, world_size=2, run_dir=str(tmp_path / "other")))
    with caplog.at_level(logging.WARNING, logger="pipeline.train"):
        hook.after_shards(4)  # another phase
        hook.before_commit(2)  # another step
        other_rank.before_commit(4)  # another rank
        assert not list(tmp_path.iterdir())
        hook.before_commit(4)
        hook.before_commit(4)  # the marker exists: once per run dir
    assert (tmp_path / ".save_fault_4").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".save_fault_2").exists()
    assert [r.getMessage() for r in caplog.records] == ["fault suite: pause in the save of step 4 (before_commit)"]


def test_partial_state_and_find_latest_skip_uncommitted(tmp_path):
    from pipeline.train.checkpoint import find_latest
    from tests.faults.suite.checkpoint_kill import partial_state

    root = tmp_path / "ckpts"
    (root / "step_000002").mkdir(parents=True)
    (root / "step_000002" / "COMMIT").write_text("step 2\n")
    (root / "step_000004").mkdir()
    (root / "step_000004" / "__0_0.distcp").write_bytes(b"partial")
    assert partial_state(str(root), 2) == ("committed", 1)
    assert partial_state(str(root), 4) == ("partial", 1)
    assert partial_state(str(root), 6) == ("absent", 0)
    assert find_latest(str(root)).endswith("step_000002")
