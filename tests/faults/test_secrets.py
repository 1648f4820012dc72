"""Fault scenario ``secrets`` (quick): planted fake credentials never reach outputs, logs or files."""

from __future__ import annotations

import json

import pytest

from tests.faults.suite.core import FaultContext, run_scenario
from tests.faults.suite.secrets import plant


@pytest.mark.slow
def test_secrets_quick(tmp_path):
    result = run_scenario("secrets", FaultContext(str(tmp_path), quick=True, log=lambda m: None))
    assert result.ok, (result.failures, result.details)
    checked = result.details["checked"]
    assert checked["train"]["exit"] == 0 and checked["train"]["remote_files"] >= 5
    assert checked["train"]["wandb_runs"] == 1  # the W&B files were written, and searched
    assert "[REDACTED]" in checked["unreachable_storage"]["error"]
    assert "[REDACTED]" in checked["wrong_type"]["error"]


def test_plant_makes_fresh_fakes_and_a_credentials_file(tmp_path):
    env_a, needles_a = plant(str(tmp_path))
    env_b, _ = plant(str(tmp_path))
    assert env_a["GOOGLE_OAUTH_ACCESS_TOKEN"].startswith("ya29.FAKE")
    assert env_a["HF_TOKEN"] != env_b["HF_TOKEN"]
    with open(env_a["GOOGLE_APPLICATION_CREDENTIALS"]) as f:
        assert "PRIVATE KEY" in json.load(f)["private_key"]
    assert all(len(n) >= 16 for n in needles_a.values())
