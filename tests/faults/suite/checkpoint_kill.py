"""Fault scenario ``checkpoint_write_kill``: ``kill -9`` a training process while it writes a checkpoint.

Real training processes (tiny model, CPU, synthetic data; full mode: torchrun with 2 ranks, quick
mode: 1 rank to fit the ``make test`` budget), checkpoints every 2 steps, ``keep_last=2``, to a
local dir or to ``gs://`` on a local GCS emulator. The fault (:class:`tests.faults.suite.hooks.SaveFault`,
installed through ``debug.hooks``: the training loop's hook points) fires once inside the save of step ``k``:

- ``kill``: the rank SIGKILLs itself (deterministic phase);
- ``external``: the rank pauses in the same place and the scenario sends ``kill -9`` from outside
  (pid from the marker file the rank wrote);

at phase ``after_shards`` (DCP shards written, rank/train-state files not) or ``before_commit``
(every file written and, for gs://, uploaded; no ``COMMIT``). Checks per trial:

- the killed run exits non-zero and leaves step ``k`` without ``COMMIT`` (or absent);
- ``find_latest`` (what ``resume=auto`` uses) returns the previous committed checkpoint, never the
  partial one;
- the relaunch (``resume=auto``, same run dir) resumes from that previous checkpoint (it loads),
  reports the partial dir ("ignoring partial checkpoint ... removing it"), removes it, commits step
  ``k`` afresh, and every step's loss is bit-equal to an uninterrupted reference run;
- ``recover_s``: from the kill to the resumed run's first step.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.faults.suite.core import FaultContext, ScenarioResult
from tests.faults.suite.hooks import marker_path, save_fault_args
from tests.faults.suite.rank_kill import (
    compare_losses,
    finish,
    launch,
    losses,
    metrics,
    train_args,
    wait_for,
    workdir_dir,
)

__all__ = ["run", "TRIALS_QUICK", "TRIALS_FULL", "partial_state", "fresh"]

SAVE_EVERY = 2
# (storage, how, phase, fault step, victim rank)
TRIALS_QUICK = [("local", "kill", "before_commit", 4, 0), ("gs", "external", "before_commit", 4, 0)]
TRIALS_FULL = [("local", "kill", "after_shards", 4, 1), ("local", "external", "before_commit", 6, 0),
               ("gs", "kill", "before_commit", 4, 1), ("gs", "external", "after_shards", 6, 0)]


def fresh(root: str) -> None:
    """Drop gcsfs's cached listings: another process changed the bucket."""
    from pipeline import fs

    if fs.is_remote(root):
        fs.get_fs(root)[0].invalidate_cache()


def partial_state(root: str, step: int) -> tuple[str, int]:
    """("absent" | "partial" | "committed", files under it) of checkpoint ``step`` under ``root``."""
    from pipeline import fs
    from pipeline.train.checkpoint import COMMIT, step_dir_name

    fresh(root)
    url = fs.join(root, step_dir_name(step))
    if not fs.exists(url):
        return "absent", 0
    fsys, path = fs.get_fs(url)
    files = fsys.find(path)
    return ("committed" if fs.exists(fs.join(url, COMMIT)) else "partial"), len(files)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def run(ctx: FaultContext) -> ScenarioResult:
    from tests.support.gcs_emulator import BUCKET, GcsEmulator

    result = ScenarioResult(scenario="checkpoint_write_kill")
    nproc, max_steps = (1, 6) if ctx.quick else (2, 8)
    specs = TRIALS_QUICK if ctx.quick else TRIALS_FULL
    result.details.update(world_size=nproc, max_steps=max_steps, save_every=SAVE_EVERY, data="synthetic",
                          trials=[])

    def args_for(run_dir: str, extra: list[str] = ()) -> list[str]:
        return train_args(run_dir, max_steps=max_steps, save_every=SAVE_EVERY, extra=extra)

    emu = None
    old_host = os.environ.get("STORAGE_EMULATOR_HOST")
    # 1-rank launches (quick mode) run two at a time (the reference beside the trials): 2 processes
    parallel = 2 if nproc == 1 else 1
    try:
        if any(s[0] == "gs" for s in specs):
            emu = GcsEmulator()
            emu.start()
            os.environ["STORAGE_EMULATOR_HOST"] = emu.host
        env = {"STORAGE_EMULATOR_HOST": emu.host} if emu else {}
        with ThreadPoolExecutor(parallel) as pool:
            ref_dir = workdir_dir(ctx, "reference")
            ref_job = pool.submit(lambda: finish(launch(args_for(ref_dir), os.path.join(ctx.workdir, "reference.log"),
                                                        nproc=nproc)))
            jobs = []
            for i, (storage, how, phase, step, victim) in enumerate(specs):
                root = (f"gs://{BUCKET}/ckpt-kill-{uuid.uuid4().hex[:8]}/checkpoints" if storage == "gs"
                        else os.path.join(workdir_dir(ctx, f"trial{i}"), "checkpoints"))
                jobs.append(pool.submit(_trial, ctx, i, storage, how, phase, step, min(victim, nproc - 1), root,
                                        args_for, nproc, env))
            code = ref_job.result()
            infos = [j.result() for j in jobs]
    finally:
        if emu is not None:
            emu.close()
        if old_host is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old_host
    if code != 0:
        result.trial(False, f"reference run failed (exit {code}); see {ctx.workdir}/reference.log")
        return result
    ref = losses(ref_dir)
    for info in infos:
        got = info.pop("losses", None)
        if got is not None:
            info["problems"] += compare_losses(ref, got, range(1, max_steps + 1))
        result.details["trials"].append(info)
        what = f"trial {info['trial']} ({info['storage']}, {info['kill']}, {info['phase']}, step {info['fault_step']})"
        result.trial(not info["problems"], f"{what}: " + "; ".join(info["problems"][:3]),
                     recover_s=info.get("recover_s", 0.0))
        ctx.log(f"{what} -> {'ok' if not info['problems'] else info['problems'][:2]}")
    result.details["recover_s_definition"] = "kill -> first step of the resumed run"
    return result


def _trial(ctx: FaultContext, i: int, storage: str, how: str, phase: str, step: int, victim: int, root: str,
           args_for, nproc: int, env: dict) -> dict:
    from pipeline.train.checkpoint import find_latest, list_checkpoints, step_dir_name

    run_dir = workdir_dir(ctx, f"trial{i}")
    staging = workdir_dir(ctx, f"trial{i}_staging")
    log_path = os.path.join(ctx.workdir, f"trial{i}.log")
    info: dict = {"trial": i, "storage": storage, "kill": how, "phase": phase, "fault_step": step,
                  "victim_rank": victim, "problems": []}
    problems = info["problems"]
    fault = save_fault_args(step=step, fault="kill" if how == "kill" else "pause", phase=phase, pause_s=120,
                            rank=victim)
    args = args_for(run_dir, [f"checkpoint.dir={root}", f"checkpoint.staging_dir={staging}", *fault])
    marker = marker_path(run_dir, step)
    proc = launch(args, log_path, nproc=nproc, env=env)
    try:
        wait_for(lambda: _read(marker).endswith("\n"),
                 proc if how == "external" else None, 180, f"the save of step {step}")
        if how == "external":
            os.kill(int(_read(marker)), signal.SIGKILL)  # kill -9 from outside, mid-save
            t_kill = time.time()
        else:
            t_kill = os.path.getmtime(marker)
    except RuntimeError as e:
        finish(proc, timeout=5)
        problems.append(str(e))
        return info
    info["killed_exit_code"] = finish(proc, timeout=120)
    if info["killed_exit_code"] == 0:
        problems.append("the killed run exited 0")
    state, files = partial_state(root, step)
    info.update(after_kill=state, partial_files=files,
                checkpoints_after_kill=[(s, ok) for s, _, ok in list_checkpoints(root)])
    if state == "committed":
        problems.append(f"step {step} was committed although its save was killed")
    fresh(root)
    latest = find_latest(root)
    previous = step - SAVE_EVERY
    if not latest or not latest.endswith(step_dir_name(previous)):
        problems.append(f"find_latest picked {latest}, expected step {previous}")
    code = finish(launch(args, log_path, nproc=nproc, env=env))  # resume=auto, same run dir
    if code != 0:
        problems.append(f"resumed run failed (exit {code}); see {log_path}")
        return info
    with open(os.path.join(run_dir, "summary.json")) as f:
        resumed_from = json.load(f).get("resumed_from") or ""
    info["resumed_from_step"] = int(resumed_from.rsplit("_", 1)[1]) if resumed_from else 0
    if info["resumed_from_step"] != previous:
        problems.append(f"resumed from {resumed_from or 'nothing'}, expected step {previous}")
    with open(log_path) as f:
        text = f.read()
    reported = f"ignoring partial checkpoint {root.rstrip('/')}/{step_dir_name(step)}" in text
    info["partial_handling"] = ("reported+removed" if reported and "removing it" in text else
                                "reported" if reported else "absent" if state == "absent" else "not reported")
    if state == "partial" and not reported:
        problems.append("the partial checkpoint was not reported by the resumed run")
    fresh(root)
    info["after_resume"] = [(s, ok) for s, _, ok in list_checkpoints(root)]
    info["fault_step_after_resume"] = partial_state(root, step)[0]  # committed again, or pruned by keep_last
    if info["fault_step_after_resume"] == "partial":
        problems.append(f"step {step} is still partial after the resumed run")
    # files a killed save left in its local staging dir (gs://): the resumed run sweeps them
    info["staging_leftover_files"] = sum(len(files) for _, _, files in os.walk(staging))
    if info["staging_leftover_files"]:
        problems.append(f"{info['staging_leftover_files']} staging files left in {staging} after the resumed run")
    got = metrics(run_dir)
    first = info["resumed_from_step"] + 1
    if first in got:
        info["recover_s"] = round(float(got[first]["time"]) - t_kill, 3)
    info["losses"] = {s: r["loss"] for s, r in got.items()}  # compared with the reference by run()
    return info
