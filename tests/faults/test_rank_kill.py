"""Fault scenario ``rank_kill`` (quick): kill -9 one rank of a 2-rank run, resume=auto, compare losses and the
per-epoch (dataset, episode, frame) accounting with an uninterrupted run; plus the accounting helpers."""

from __future__ import annotations

import collections
import json

import pytest

from tests.faults.suite.core import FaultContext, run_scenario


@pytest.mark.slow
def test_rank_kill_quick(tmp_path):
    result = run_scenario("rank_kill", FaultContext(str(tmp_path), quick=True, log=lambda m: None))
    assert result.ok, (result.failures, result.details)
    [trial] = result.details["trials"]
    assert trial["killed_exit_code"] != 0 and trial["samples_lost"] == 0 and trial["samples_repeated"] == 0
    assert trial["resumed_from_step"] <= trial["killed_at_step"] and result.recover_s > 0


def test_account_counts_a_lost_and_a_repeated_sample():
    from tests.faults.suite.rank_kill import account

    a, b, c = ("bridge_orig", "ep0", 0), ("bridge_orig", "ep0", 1), ("fractal20220817_data", "ep3", 2)
    ref = {0: collections.Counter([a, b, c]), 1: collections.Counter([a])}
    got = {0: collections.Counter([a, b, b]), 1: collections.Counter([a])}  # c lost, b used twice
    assert account(ref, got) == (1, 1)
    assert account(ref, ref) == (0, 0)
    assert account(ref, {0: collections.Counter([a, b, c])}) == (1, 0)  # all of epoch 1 missing


def test_surviving_history_keeps_the_last_record_of_each_step(tmp_path):
    from tests.faults.suite.rank_kill import epoch_multisets, surviving_history

    samples = tmp_path / "samples"
    samples.mkdir()
    rec = lambda step, frame: json.dumps({"step": step, "samples": [[0, "ds", "ep", frame]]})  # noqa: E731
    # steps 1-3, killed; resumed from the step-1 checkpoint replays 2 and 3; a torn last line
    (samples / "rank_00000.jsonl").write_text("\n".join([rec(1, 0), rec(2, 9), rec(3, 9), rec(2, 1), rec(3, 2)])
                                             + '\n{"step": 4, "sam')
    hist, replayed = surviving_history(str(tmp_path))
    assert hist == {0: {1: [[0, "ds", "ep", 0]], 2: [[0, "ds", "ep", 1]], 3: [[0, "ds", "ep", 2]]}}
    assert replayed == 2
    assert epoch_multisets(hist) == {0: collections.Counter({("ds", "ep", 0): 1, ("ds", "ep", 1): 1,
                                                             ("ds", "ep", 2): 1})}


def test_plan_check_flags_duplicates_and_short_epochs():
    from tests.faults.suite.rank_kill import plan_check

    full = collections.Counter({("ds", "ep", f): 1 for f in range(8)})
    assert plan_check({0: full}, epoch_frames=9, global_batch=4, steps=2) == []
    dup = collections.Counter({("ds", "ep", f): 1 for f in range(7)}) + collections.Counter([("ds", "ep", 0)])
    problems = plan_check({0: dup}, epoch_frames=9, global_batch=4, steps=2)
    assert any("used twice" in p for p in problems) and any("7 distinct" in p for p in problems)


def test_sample_log_appends_and_reads_back(tmp_path):
    from pipeline.train.metrics import SampleLog, read_sample_log

    path = tmp_path / "samples" / "rank_00001.jsonl"
    for frames in ([0, 1], [2]):  # two "processes", the second replays step 1
        log = SampleLog(str(tmp_path), rank=1)
        log.add(0, [("ds", "ep", f) for f in frames])
        log.write(1)
        log.close()
    assert read_sample_log(str(path)) == {1: [[0, "ds", "ep", 2]]}
    with open(path, "a") as f:
        f.write('{"step": 2, "samp')  # killed mid-line
    log = SampleLog(str(tmp_path), rank=1)
    log.add(1, [("ds", "ep", 3)])
    log.write(2)
    log.close()
    assert read_sample_log(str(path)) == {1: [[0, "ds", "ep", 2]], 2: [[1, "ds", "ep", 3]]}
