"""The fault suite: each scenario injects a real fault and checks what survives it.

    python -m tests.faults.suite [--quick] [--only NAME[,NAME]] [--workdir DIR] [--seed N]

One JSON line per scenario (``scenario``, ``trials``, ``passed``, ``samples_lost``,
``samples_repeated``, ``recover_s`` + details), then a summary table; exit 1 if any trial failed.
``--quick`` is the small version that ``make test`` runs (fewer trials, smaller data).
"""

from tests.faults.suite.core import SCENARIOS, FaultContext, ScenarioResult, run_scenario

__all__ = ["SCENARIOS", "FaultContext", "ScenarioResult", "run_scenario"]
