"""Fault scenario ``checkpoint_write_kill`` (quick): kill -9 a training process inside a checkpoint save (local
and gs:// on the emulator), resume=auto; plus the save-fault hook and the partial-state helper."""

from __future__ import annotations

import os
from types import SimpleNamespace

from pipeline.faults.core import FaultContext, run_scenario


def test_checkpoint_write_kill_quick(tmp_path):
    result = run_scenario("checkpoint_write_kill", FaultContext(str(tmp_path), quick=True, log=lambda m: None))
    assert result.ok, (result.failures, result.details)
    trials = result.details["trials"]
    assert [t["storage"] for t in trials] == ["local", "gs"]
    for t in trials:
        assert t["after_kill"] == "partial" and t["partial_handling"] == "reported+removed"
        assert t["resumed_from_step"] == t["fault_step"] - 2 and t["fault_step_after_resume"] == "committed"


def test_save_fault_hook_fires_once_before_the_original(tmp_path):
    from pipeline.train.loop import install_save_fault

    calls = []

    class FakeCkpt:
        def _finalize(self, step, url, staging):
            calls.append((step, os.path.exists(tmp_path / f".save_fault_{step}")))

    ckpt = FakeCkpt()
    debug = SimpleNamespace(save_fault_step=4, save_fault="pause", save_fault_phase="before_commit",
                            save_pause_s=0.0)
    install_save_fault(ckpt, debug, run_dir=str(tmp_path))
    ckpt._finalize(2, "u2", None)
    ckpt._finalize(4, "u4", None)
    ckpt._finalize(4, "u4", None)
    assert calls == [(2, False), (4, True), (4, True)]
    assert (tmp_path / ".save_fault_4").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".save_fault_2").exists()


def test_partial_state_and_find_latest_skip_uncommitted(tmp_path):
    from pipeline.faults.checkpoint_kill import partial_state
    from pipeline.train.checkpoint import find_latest

    root = tmp_path / "ckpts"
    (root / "step_000002").mkdir(parents=True)
    (root / "step_000002" / "COMMIT").write_text("step 2\n")
    (root / "step_000004").mkdir()
    (root / "step_000004" / "__0_0.distcp").write_bytes(b"partial")
    assert partial_state(str(root), 2) == ("committed", 1)
    assert partial_state(str(root), 4) == ("partial", 1)
    assert partial_state(str(root), 6) == ("absent", 0)
    assert find_latest(str(root)).endswith("step_000002")
