"""Fault scenario ``curation_kill`` (quick): SIGKILL a real `vla curate` mid-shard-writes, re-run, compare."""

from __future__ import annotations

import pytest

from tests.faults.suite.core import FaultContext, run_scenario


@pytest.mark.slow
def test_curation_kill_quick(tmp_path):
    result = run_scenario("curation_kill", FaultContext(str(tmp_path), quick=True, log=lambda m: None))
    assert result.ok, (result.failures, result.details)
    [trial] = result.details["trials"]
    assert trial["kill_point"] == "mid_shard_writes" and trial["shards_at_kill"] >= 1
    assert trial["rerun_statuses"] == ["resumed", "curated"]


def test_compare_outputs_sees_a_changed_shard_and_leftovers(tmp_path):
    from pipeline.data.manifest import CuratedDataset
    from tests.faults.suite.curation_kill import compare_outputs

    for out in ("a", "b"):
        d = tmp_path / CuratedDataset(out, "bridge_orig").url
        d.mkdir(parents=True)
        (d / "manifest.json").write_text("{}")
        (d / "bridge_orig-train.tfrecord-00000-of-00001").write_bytes(b"x" if out == "a" else b"y")
    (tmp_path / CuratedDataset("b", "bridge_orig").file("manifest.json.tmp-1234")).write_text("{")
    problems = compare_outputs(str(tmp_path / "a"), str(tmp_path / "b"), ("bridge_orig",))
    assert any("tfrecord-00000-of-00001: differs" in p for p in problems)
    assert any("manifest.json.tmp-1234: left over" in p for p in problems)
