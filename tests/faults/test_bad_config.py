"""Fault scenario ``bad_config``: every bad input -> exit 2, one `error:` line naming it, no traceback, no files."""

from __future__ import annotations

import pytest

from tests.faults.suite.bad_config import CASES, prepare_sandbox, run_case
from tests.faults.suite.core import FaultContext, run_scenario
from tests.support.net import free_port


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("bad_config")
    prepare_sandbox(str(root))
    return str(root)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_in_process(case, sandbox):
    assert run_case(case, sandbox, in_subprocess=False) == []


def test_table_is_large_enough():
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)
    assert sum(c.subprocess for c in CASES) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.subprocess], ids=lambda c: c.name)
def test_case_subprocess(case, sandbox):
    """The real process: exit status 2 and no traceback (not only what main() returns)."""
    assert run_case(case, sandbox, in_subprocess=True, port=free_port()) == []


def test_bad_config_quick_scenario(tmp_path, monkeypatch):
    """The scenario itself (what `make faults` runs), with the subprocess runs already covered above."""
    import tests.faults.suite.bad_config as bc

    monkeypatch.setattr(bc, "CASES", tuple(c for c in CASES if not c.subprocess)[:6])
    result = run_scenario("bad_config", FaultContext(str(tmp_path), quick=True, log=lambda m: None))
    assert result.ok, result.failures
    assert result.trials == 6


def test_a_missing_check_is_caught(tmp_path):
    """The checks can fail: an input that is fine runs (exit 0, no error line, files written)."""
    from tests.faults.suite.bad_config import Case

    prepare_sandbox(str(tmp_path))
    fine = Case("valid_input", ("fixture", "out={sb}/fx", "datasets=[bridge_orig]", "episodes=1", "image_size=16",
                                "steps=4"), "error")
    problems = run_case(fine, str(tmp_path), in_subprocess=False)
    assert any("exit status 0" in p for p in problems) and any("files written" in p for p in problems), problems
