"""The fault-suite runner: JSON line per scenario, summary table, exit status, crash containment."""

from __future__ import annotations

import json
import sys
import types

from tests.faults.suite import SCENARIOS, FaultContext, ScenarioResult, run_scenario
from tests.faults.suite.__main__ import main


def _install(monkeypatch, name: str, fn) -> None:
    mod = types.ModuleType(f"_fake_{name}")
    mod.run = fn
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(SCENARIOS, name, f"{mod.__name__}:run")


def _good(ctx: FaultContext) -> ScenarioResult:
    r = ScenarioResult("good")
    for i in range(3 if not ctx.quick else 1):
        r.trial(True, recover_s=0.5 * (i + 1))
    return r


def _lossy(ctx: FaultContext) -> ScenarioResult:
    r = ScenarioResult("lossy", samples_lost=2)
    r.trial(True)
    r.trial(False, "step 7: 2 samples lost")
    return r


def _crash(ctx: FaultContext) -> ScenarioResult:
    raise RuntimeError("injected bug")


def test_result_ok_needs_every_trial():
    r = ScenarioResult("x")
    assert not r.ok  # no trial run is not a pass
    r.trial(True, recover_s=1.234)
    assert r.ok and r.recover_s == 1.234
    r.trial(False, "broken")
    assert not r.ok and r.failures == ["broken"] and (r.trials, r.passed) == (2, 1)


def test_crashing_scenario_is_reported_not_raised(tmp_path, monkeypatch):
    _install(monkeypatch, "crash", _crash)
    r = run_scenario("crash", FaultContext(str(tmp_path)))
    assert not r.ok and "injected bug" in r.failures[0] and "traceback" in r.details


def test_main_prints_json_lines_and_table(tmp_path, monkeypatch, capsys):
    for name, fn in (("good", _good), ("lossy", _lossy), ("crash", _crash)):
        _install(monkeypatch, name, fn)
    code = main(["--only", "good,lossy,crash", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    lines = [json.loads(x) for x in out if x.startswith("{")]
    assert code == 1
    assert [d["scenario"] for d in lines] == ["good", "lossy", "crash"]
    for d in lines:
        assert {"scenario", "trials", "passed", "samples_lost", "samples_repeated", "recover_s"} <= set(d)
    assert lines[0]["trials"] == 3 and lines[0]["ok"] and lines[0]["recover_s"] == 1.5
    assert lines[1]["samples_lost"] == 2 and not lines[1]["ok"]
    table = "\n".join(x for x in out if not x.startswith("{"))
    assert "scenario" in table and "FAIL" in table and "step 7: 2 samples lost" in table


def test_main_all_ok_exits_zero_and_quick_is_passed(tmp_path, monkeypatch, capsys):
    _install(monkeypatch, "good", _good)
    assert main(["--only", "good", "--quick"]) == 0
    d = json.loads(capsys.readouterr().out.splitlines()[0])
    assert d["trials"] == 1


def test_unknown_scenario_exit_2(capsys):
    assert main(["--only", "nope"]) == 2
    assert "unknown scenario" in capsys.readouterr().err
