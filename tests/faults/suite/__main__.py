"""``python -m tests.faults.suite``: run the fault scenarios, one JSON line each, then a table."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import pipeline  # noqa: F401  (env defaults)
from tests.faults.suite.core import SCENARIOS, FaultContext, ScenarioResult, run_scenario


def summary_table(results: list[ScenarioResult]) -> str:
    head = f"{'scenario':<24} {'trials':>6} {'passed':>6} {'lost':>5} {'repeated':>8} {'recover_s':>9}  result"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.scenario:<24} {r.trials:>6} {r.passed:>6} {r.samples_lost:>5} "
                    f"{r.samples_repeated:>8} {r.recover_s:>9.2f}  {'ok' if r.ok else 'FAIL'}")
        rows += [f"    - {f}" for f in r.failures[:5]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.suite", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small version (what `make test` runs)")
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    p.add_argument("--workdir", default="", help="keep scenario files here (default: a temp dir, removed)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"error: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    root = args.workdir or tempfile.mkdtemp(prefix="vla-faults-")
    results = []
    try:
        for name in names:
            wd = os.path.join(root, name)
            os.makedirs(wd, exist_ok=True)
            ctx = FaultContext(workdir=wd, quick=args.quick, seed=args.seed,
                               log=lambda m, n=name: print(f"[{n}] {m}", file=sys.stderr, flush=True))
            r = run_scenario(name, ctx)
            results.append(r)
            print(json.dumps(r.to_json(), sort_keys=True, default=str), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(summary_table(results), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
