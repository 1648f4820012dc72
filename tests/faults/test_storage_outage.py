"""Fault scenario ``storage_outage`` (quick): the GCS emulator goes down during a checkpoint upload
and during stream reads; retries must carry the work through, or fail clearly without a COMMIT."""

from __future__ import annotations

import pytest

from tests.faults.suite.core import FaultContext, run_scenario


@pytest.mark.slow
def test_storage_outage_quick(tmp_path):
    result = run_scenario("storage_outage", FaultContext(str(tmp_path), quick=True, log=lambda m: None))
    assert result.ok, (result.failures, result.details)
    [upload] = result.details["upload"]
    assert upload["loaded_bit_exact"] and upload["retries_logged"] >= 1
    assert result.details["upload_budget"]["commit_exists"] is False
    assert "attempt" in result.details["upload_budget"]["error"]
    assert result.samples_lost == 0 and result.samples_repeated == 0
    assert "StorageUnavailable" in result.details["stream_budget"]["error"]
