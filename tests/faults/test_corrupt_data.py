"""Fault scenario ``corrupt_data`` (quick) and the reader behaviour it relies on."""

from __future__ import annotations

import numpy as np
import pytest

from tests.faults.suite.core import FaultContext, run_scenario


@pytest.mark.slow
def test_corrupt_data_quick(tmp_path):
    result = run_scenario("corrupt_data", FaultContext(str(tmp_path), quick=True, log=lambda m: None))
    assert result.ok, (result.failures, result.details)
    assert result.trials == 8
    assert result.details["quarantine_reasons"] == {"corrupt_record": 2, "missing_feature": 1, "nan_inf": 1,
                                                    "undecodable_image": 1}
    before, fresh = result.details["stream"]["index_before_fault"], result.details["stream"]["fresh_index"]
    assert before["corrupt_episodes"] >= 2 and before["replaced_samples"] == result.samples_lost > 0
    assert fresh["skipped_records"] == 2 and fresh["corrupt_episodes"] == 0
    assert before["bad_images"] > 0 and fresh["bad_images"] > 0


def test_reader_skips_a_record_without_a_declared_feature(tmp_path):
    import pytest

    from pipeline.data.io.example import decode_example, encode_example
    from pipeline.data.io.rlds_reader import ReadStats, read_episodes
    from pipeline.data.io.rlds_writer import encode_episode
    from pipeline.data.io.tfrecord import frame_record
    from pipeline.errors import UserError

    features = {"steps": {"action": "Tensor(2,) float32", "is_first": "bool"}, "episode_metadata": {"id": "Text"}}
    eps = [{"steps": {"action": np.full((3, 2), i, np.float32), "is_first": np.array([1, 0, 0], bool)},
            "episode_metadata": {"id": f"ep{i}"}} for i in range(3)]
    records = [encode_episode(e, features) for e in eps]
    ex = decode_example(records[1])
    del ex["steps/action"]
    records[1] = encode_example(ex)
    path = tmp_path / "x-train.tfrecord-00000-of-00001"
    path.write_bytes(b"".join(frame_record(r) for r in records))
    with pytest.raises(UserError, match="steps/action"):
        list(read_episodes(str(path), features))
    stats = ReadStats()
    got = list(read_episodes(str(path), features, on_corrupt="skip", stats=stats))
    assert [e["_source"]["index"] for e in got] == [0, 2]
    [rec] = stats.records
    assert rec["kind"] == "missing_feature" and rec["index"] == 1 and rec["file"] == str(path)
    assert "steps/action" in rec["message"] and "record 1" in rec["message"]
