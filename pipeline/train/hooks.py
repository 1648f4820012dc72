"""Named points of a training run where extra behaviour can run (fault injection, drills, probes).

The loop and the checkpoint manager call a :class:`TrainHooks` at these points; the default does
nothing. In order, per run:

- ``start(run)``: once, after resume and before the first step (``run``: rank, world size, run dir).
- ``after_step(step)``: after each optimizer step, once its metrics are logged and an async save of
  the previous step is committed; before this step's checkpoint.
- ``after_shards(step)``: inside a save, once the DCP shards are written (still in flight with
  ``checkpoint.async_save``); the rank and train-state files are not written yet.
- ``before_commit(step)``: inside a save, once every file is written (and uploaded, for gs://);
  the ``COMMIT`` marker is not written yet.

A run gets its hooks from the ``debug`` config section, resolved once by :func:`build_hooks`:
``debug.crash_at_step`` / ``debug.term_at_step`` (:class:`CrashHooks`, built in) and
``debug.hooks=module:factory`` with keyword arguments ``debug.hook_args.<name>=<value>`` (the fault
suite, ``tests/faults/suite/hooks.py``, installs its checkpoint faults this way).
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from pipeline import fs
from pipeline.errors import UserError

__all__ = ["RunInfo", "TrainHooks", "HookList", "CrashHooks", "build_hooks", "resolve_factory"]

log = logging.getLogger("pipeline.train")


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    rank: int
    world_size: int
    run_dir: str


class TrainHooks:
    """No-op hooks; subclass and override the points you need (see the module doc)."""

    def start(self, run: RunInfo) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def after_shards(self, step: int) -> None:
        pass

    def before_commit(self, step: int) -> None:
        pass


class HookList(TrainHooks):
    """Calls each of ``hooks`` in order at every point."""

    def __init__(self, hooks: list[TrainHooks]) -> None:
        self.hooks = list(hooks)

    def start(self, run: RunInfo) -> None:
        for h in self.hooks:
            h.start(run)

    def after_step(self, step: int) -> None:
        for h in self.hooks:
            h.after_step(step)

    def after_shards(self, step: int) -> None:
        for h in self.hooks:
            h.after_shards(step)

    def before_commit(self, step: int) -> None:
        for h in self.hooks:
            h.before_commit(step)


class CrashHooks(TrainHooks):
    """``debug.term_at_step``: SIGTERM to rank ``crash_rank`` after that step (a preemption drill);
    ``debug.crash_at_step``: that rank exits hard once after that step (marker
    ``run_dir/.crashed_<step>``, so the relaunch does not crash again)."""

    def __init__(self, *, crash_at_step: int = -1, term_at_step: int = -1, crash_rank: int = 0) -> None:
        self.crash_at_step, self.term_at_step, self.crash_rank = crash_at_step, term_at_step, crash_rank
        self.run: RunInfo | None = None

    def start(self, run: RunInfo) -> None:
        self.run = run

    def after_step(self, step: int) -> None:
        if self.run is None or self.run.rank != self.crash_rank:
            return
        if step == self.term_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        if step != self.crash_at_step:
            return
        marker = fs.join(self.run.run_dir, f".crashed_{step}")
        if fs.exists(marker):
            return
        fs.write_text(marker, f"rank {self.run.rank}\n")
        log.warning("debug.crash_at_step=%d: exiting rank %d", step, self.run.rank)
        os._exit(1)


def resolve_factory(spec: str, key: str = "debug.hooks") -> Any:
    """The callable named by ``module:attr``; a UserError naming ``key`` when it cannot be imported."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise UserError(f"{key}={spec!r}: expected an import string module:attr")
    from pipeline.config import import_object

    try:
        return import_object(spec)
    except (ImportError, AttributeError) as e:
        raise UserError(f"{key}={spec!r}: cannot import it ({type(e).__name__}: {e})") from None


def build_hooks(debug: Any) -> TrainHooks:
    """The hooks of a run from its ``debug`` config section (resolved once, at the start)."""
    hooks: list[TrainHooks] = []
    if debug.crash_at_step >= 0 or debug.term_at_step >= 0:
        hooks.append(CrashHooks(crash_at_step=debug.crash_at_step, term_at_step=debug.term_at_step,
                                crash_rank=debug.crash_rank))
    if debug.hooks:
        factory = resolve_factory(debug.hooks)
        try:
            made = factory(**dict(debug.hook_args))
        except (TypeError, ValueError) as e:
            raise UserError(f"debug.hook_args={dict(debug.hook_args)}: {debug.hooks} refused them ({e})") from None
        if not isinstance(made, TrainHooks):
            raise UserError(f"debug.hooks={debug.hooks!r}: returned {type(made).__name__}, not TrainHooks")
        hooks.append(made)
    return hooks[0] if len(hooks) == 1 else HookList(hooks)
