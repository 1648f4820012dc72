"""Training hooks of the fault suite (``pipeline.train.hooks``), installed into a real ``vla train``
run with ``debug.hooks=tests.faults.suite.hooks:SaveFault`` and ``debug.hook_args.<name>=<value>``
(:func:`save_fault_args` builds those overrides). The trainer subprocesses run from the checkout
with it on ``PYTHONPATH``, so this module imports there."""

from __future__ import annotations

import logging
import os
import signal
import time

from pipeline import fs
from pipeline.train.hooks import RunInfo, TrainHooks

__all__ = ["SaveFault", "save_fault_args", "marker_path", "PHASES"]

log = logging.getLogger("pipeline.train")
PHASES = ("after_shards", "before_commit")


def marker_path(run_dir: str, step: int) -> str:
    return fs.join(run_dir, f".save_fault_{step}")


class SaveFault(TrainHooks):
    """Once per run dir (marker ``run_dir/.save_fault_<step>``, holding the pid, written first), rank
    ``rank`` faults inside the checkpoint save of ``step``: ``kill`` SIGKILLs itself, ``pause`` sleeps
    ``pause_s`` (a window for an external ``kill -9`` or a storage outage).

    ``phase``: ``after_shards`` (the DCP shards are written, still in flight with async_save; the rank
    and train-state files are not) or ``before_commit`` (every file written and, for gs://,
    uploaded; no ``COMMIT``)."""

    def __init__(self, *, step: int, fault: str = "kill", phase: str = "before_commit", pause_s: float = 30.0,
                 rank: int = 0) -> None:
        if fault not in ("kill", "pause") or phase not in PHASES:
            raise ValueError(f"SaveFault: fault={fault!r} (kill | pause), phase={phase!r} ({' | '.join(PHASES)})")
        self.step, self.fault, self.phase, self.pause_s, self.rank = int(step), fault, phase, float(pause_s), int(rank)
        self.run: RunInfo | None = None

    def start(self, run: RunInfo) -> None:
        self.run = run

    def after_shards(self, step: int) -> None:
        if self.phase == "after_shards":
            self._fault(step)

    def before_commit(self, step: int) -> None:
        if self.phase == "before_commit":
            self._fault(step)

    def _fault(self, step: int) -> None:
        if self.run is None or step != self.step or self.run.rank != self.rank:
            return
        marker = marker_path(self.run.run_dir, step)
        if fs.exists(marker):
            return
        fs.write_text(marker, f"{os.getpid()}\n")
        log.warning("fault suite: %s in the save of step %d (%s)", self.fault, step, self.phase)
        if self.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.pause_s)


def save_fault_args(*, step: int, fault: str, phase: str, pause_s: float = 30.0, rank: int = 0) -> list[str]:
    """The ``vla train`` overrides that install :class:`SaveFault`."""
    return [f"debug.hooks={__name__}:SaveFault", f"debug.hook_args.step={step}", f"debug.hook_args.fault={fault}",
            f"debug.hook_args.phase={phase}", f"debug.hook_args.pause_s={pause_s}", f"debug.hook_args.rank={rank}"]
