"""Scenario registry, the context a scenario runs in, and the result it reports."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SCENARIOS", "REPO_ROOT", "FaultContext", "ScenarioResult", "run_scenario", "patched_env", "WarningLines"]

# the checkout: subprocesses run from here with it on PYTHONPATH (they import tests.faults.suite.hooks)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# name -> "module:function"; the function takes a FaultContext and returns a ScenarioResult.
SCENARIOS: dict[str, str] = {
    "rank_kill": "tests.faults.suite.rank_kill:run",
    "checkpoint_write_kill": "tests.faults.suite.checkpoint_kill:run",
    "curation_kill": "tests.faults.suite.curation_kill:run",
    "corrupt_data": "tests.faults.suite.corrupt_data:run",
    "bad_config": "tests.faults.suite.bad_config:run",
    "storage_outage": "tests.faults.suite.storage_outage:run",
    "secrets": "tests.faults.suite.secrets:run",
}


@dataclass
class FaultContext:
    """Where and how a scenario runs. ``workdir`` is a fresh directory owned by the scenario."""

    workdir: str
    quick: bool = False
    seed: int = 0
    log: Callable[[str], None] = print

    def path(self, *parts: str) -> str:
        p = os.path.join(self.workdir, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p


@dataclass
class ScenarioResult:
    """What one scenario measured over its trials. ``failures`` holds one line per failed check."""

    scenario: str
    trials: int = 0
    passed: int = 0
    samples_lost: int = 0
    samples_repeated: int = 0
    recover_s: float = 0.0  # worst time from the fault to a recovered state over the trials
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.trials > 0 and self.passed == self.trials and not self.failures

    def trial(self, ok: bool, failure: str = "", recover_s: float = 0.0) -> None:
        """Record one trial; a failed trial should say what broke in ``failure``."""
        self.trials += 1
        self.passed += int(bool(ok))
        self.recover_s = max(self.recover_s, round(float(recover_s), 3))
        if not ok:
            self.failures.append(failure or f"trial {self.trials} failed")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def run_scenario(name: str, ctx: FaultContext) -> ScenarioResult:
    """Run one scenario; an unexpected exception is a failed scenario, not a crash of the suite."""
    module, _, attr = SCENARIOS[name].partition(":")
    t0 = time.time()
    try:
        result = getattr(importlib.import_module(module), attr)(ctx)
    except Exception as e:  # the suite must report, not die
        result = ScenarioResult(scenario=name)
        result.trial(False, f"{type(e).__name__}: {e}")
        result.details["traceback"] = traceback.format_exc(limit=8)
    result.scenario = name
    result.details.setdefault("wall_s", round(time.time() - t0, 1))
    return result


@contextlib.contextmanager
def patched_env(values: dict[str, str], keys: Iterable[str] = ()) -> Iterator[None]:
    """Set ``values`` in ``os.environ``; on exit restore them and every name in ``keys``."""
    old = {k: os.environ.get(k) for k in (*values, *keys)}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WarningLines(logging.Handler):
    """A logging handler that keeps the message of every WARNING-or-worse record in ``lines``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
