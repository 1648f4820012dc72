"""Checkpoint/resume with real 2-rank FSDP2 over gloo (torchrun): bit-exact resume after a crash,
resume=auto skipping a partial checkpoint, gs:// checkpoints, and resharded resume 2 -> 1 -> 2."""

from __future__ import annotations

import os

import pytest
from train_helpers import BASE, check, losses, run_train

pytestmark = pytest.mark.slow

STEPS = 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """An uninterrupted 2-rank run of STEPS steps, checkpoints every 2 steps (local)."""
    run_dir = str(tmp_path_factory.mktemp("ref"))
    check(run_train([*BASE, f"run_dir={run_dir}", f"stop.max_steps={STEPS}", "checkpoint.save_every=2",
                     "checkpoint.keep_last=0"]))
    return run_dir


def test_crash_then_resume_auto_is_bit_exact_async_gcs(reference, tmp_path, gcs_bucket):
    run_dir = str(tmp_path / "run")
    ckpt = f"{gcs_bucket}/ckpts"
    args = [*BASE, f"run_dir={run_dir}", f"stop.max_steps={STEPS}", "checkpoint.save_every=2",
            f"checkpoint.dir={ckpt}", "checkpoint.async_save=true", "checkpoint.keep_last=2", "debug.crash_at_step=3", "debug.crash_rank=1"]
    crashed = run_train(args)
    assert crashed.returncode != 0
    assert os.path.exists(os.path.join(run_dir, ".crashed_3"))
    from pipeline import fs
    from pipeline.train.checkpoint import list_checkpoints

    assert [(s, ok) for s, _, ok in list_checkpoints(ckpt)] == [(2, True)]
    fs.write_text(f"{ckpt}/step_000004/__0_0.distcp", "partial")  # a save that died before COMMIT
    resumed = run_train(args)  # resume=auto (default)
    check(resumed)
    assert "ignoring partial checkpoint" in resumed.stderr
    assert [(s, ok) for s, _, ok in list_checkpoints(ckpt)] == [(4, True), (STEPS, True)]  # keep_last=2
    ref, got = losses(reference), losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(3, STEPS + 1):
        assert got[step] == ref[step], (step, got[step], ref[step])  # bit-exact
    from pipeline.train.export import export_checkpoint, load_exported

    out = str(tmp_path / "export")
    assert export_checkpoint(ckpt, out).endswith(f"step_{STEPS:06d}")  # latest committed, from gs://
    model, tok, stats = load_exported(out)
    assert set(stats) == {"synthetic_a", "synthetic_b"} and len(tok) == model.config.vocab_size


def test_resharded_resume_2_to_1_to_2(reference, tmp_path):
    one = str(tmp_path / "one")
    ck4 = os.path.join(reference, "checkpoints", "step_000004")
    proc = run_train([*BASE, f"run_dir={one}", f"resume={ck4}", "stop.max_steps=5", "per_device_batch=8"], nproc=1)
    check(proc)
    got = losses(one)
    assert sorted(got) == [5]
    assert abs(got[5] - losses(reference)[5]) < 5e-3 * abs(losses(reference)[5])
    two = str(tmp_path / "two")
    ck5 = os.path.join(one, "checkpoints", "step_000005")
    check(run_train([*BASE, f"run_dir={two}", f"resume={ck5}", f"stop.max_steps={STEPS}"]))
    got2 = losses(two)
    assert sorted(got2) == [STEPS]
    assert abs(got2[STEPS] - losses(reference)[STEPS]) < 0.05 * abs(losses(reference)[STEPS])
