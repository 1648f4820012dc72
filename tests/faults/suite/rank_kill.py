"""Fault scenario ``rank_kill``: ``kill -9`` one rank of a real 2-rank training run, resume, compare.

Setup: fixtures of two OXE layouts -> Ray curation (cached under ``<workdir>/data``); training reads
a mixture weighted by the curated training frames and not balanced by size (share_i ∝ N_i), so an
epoch draws every curated frame exactly once (minus the tail of < one global batch). (Balanced by
size, shares follow the statistics' num_transitions, which also count episodes the curation held
out or filtered, as OpenVLA's; frames would then repeat or be skipped within an epoch.) Training: torchrun, 2 ranks, gloo, tiny model, CPU,
``debug.sample_log=true`` (each rank logs the (epoch, dataset, episode_id, frame) of every sample
of every step, see ``pipeline.train.metrics.SampleLog``).

1. An uninterrupted reference run to ``max_steps``.
2. Per trial (seed-derived kill step and victim rank): the same run in a fresh run dir; once
   rank 0 has logged the kill step, the scenario sends SIGKILL from outside to the victim rank's
   process (found as the torchrun agent's child with that ``RANK``), waits for the group to die,
   then relaunches the same command (``resume=auto``, same run dir) to the same ``max_steps``.

RESUME SEMANTICS (what is checked): the resumed run restarts from the newest committed
checkpoint, so the steps after it that the killed run had already executed are executed again
("replayed"). A replayed step is a re-execution, not a second use of its samples: metrics.jsonl is
truncated to the checkpoint step on resume, and the per-rank sample logs are append-only, the
**surviving history** being the last record of each step. Checks per trial:

- every step 1..max_steps is in the metrics and its loss is bit-equal to the reference's;
- per epoch, the multiset of (dataset, episode_id, frame) of the surviving history (all ranks)
  equals the reference's: ``samples_lost`` counts reference samples missing, ``samples_repeated``
  extra ones (both must be 0); the reference itself must use each frame at most once per epoch
  and every full epoch exactly ``epoch_frames - tail`` distinct frames (the epoch plan);
- ``recover_s``: from the SIGKILL to the resumed run completing the killed step again (the last
  step the killed run logged), or its first step when the checkpoint was at the killed step.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

from tests.faults.suite.core import REPO_ROOT, FaultContext, ScenarioResult

__all__ = ["run", "workdir_dir", "prepare_data", "train_args", "launch", "rank_pids", "wait_for", "losses",
           "surviving_history", "epoch_multisets", "account", "plan_check", "compare_losses"]

DATASETS = ("bridge_orig", "fractal20220817_data")
WORLD = 2
BATCH = 2  # per rank: a global batch of 4
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID", "ROLE_RANK", "ROLE_WORLD_SIZE")


# -- data + launching -----------------------------------------------------------------------------------
def workdir_dir(ctx: FaultContext, name: str) -> str:
    path = os.path.join(ctx.workdir, name)
    os.makedirs(path, exist_ok=True)
    return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3", **(extra or {}))
    return env


def _cli(args: list[str], log_path: str, timeout: float = 300) -> None:
    with open(log_path, "a") as log:
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=child_env(), cwd=REPO_ROOT,
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"`vla {' '.join(args[:1])}` failed (exit {proc.returncode}); see {log_path}")


def prepare_data(ctx: FaultContext, episodes: int = 3) -> tuple[str, str, int]:
    """Fixtures -> curated data under ``<workdir>/data`` (reused when present).

    Returns (curated root, mixture YAML path, frames per epoch)."""
    base = workdir_dir(ctx, "data")
    mixture = os.path.join(base, "mixture.yaml")
    curated = os.path.join(base, "curated")
    from pipeline.data.manifest import CuratedDataset

    def write_mixture(weights: dict[str, int]) -> None:
        with open(mixture, "w") as f:
            f.write("name: fault_rank_kill\ndescription: two fixture datasets, each frame once per epoch "
                    "(weights = curated training frames)\nbalance_by_size: false\ndatasets:\n"
                    + "".join(f"  {n}: {w}\n" for n, w in weights.items()))

    if not all(CuratedDataset(curated, n).is_curated() for n in DATASETS):
        raw, log = os.path.join(base, "raw"), os.path.join(base, "prepare.log")
        write_mixture({n: 1 for n in DATASETS})  # curation reads only which datasets it lists
        _cli(["fixture", f"out={raw}", f"datasets=[{','.join(DATASETS)}]", f"episodes={episodes}", "steps=6-8",
              "image_size=16", "shards=1", f"seed={ctx.seed}"], log)
        _cli(["curate", f"mixture={mixture}", f"source={raw}", f"out={curated}", "progress=false",
              "ray.num_cpus=2"], log)
    frames = {n: CuratedDataset(curated, n).counts()[0] for n in DATASETS}
    write_mixture(frames)  # reweighting never needs re-curation
    return curated, mixture, sum(frames.values())


def train_args(run_dir: str, *, max_steps: int, save_every: int, data: tuple[str, str] | None = None,
               extra: Iterable[str] = ()) -> list[str]:
    """A tiny deterministic CPU run; ``data`` = (curated root, mixture) or None for synthetic data."""
    src = ["data.source=synthetic"] if data is None else [
        f"data.data_root={data[0]}", f"data.mixture={data[1]}", "data.stream.num_workers=0", "data.stream.io_threads=1",
        f"data.stream.index_cache_dir={os.path.join(os.path.dirname(data[0]), 'index_cache')}"]
    return [*src, f"run_dir={run_dir}", f"per_device_batch={BATCH}", "optim.lr=1e-3", "metrics.progress=false",
            "metrics.tensorboard=false", "stop.accuracy=2.0", "model.llm_num_layers=1", "model.vision_depth=1",
            f"stop.max_steps={max_steps}", f"checkpoint.save_every={save_every}", "checkpoint.keep_last=2",
            "debug.sample_log=true", *extra]


def launch(args: list[str], log_path: str, *, nproc: int = WORLD, env: dict[str, str] | None = None
           ) -> subprocess.Popen:
    """Start ``pipeline.train.main`` under torchrun (one process when ``nproc == 1``), in its own process
    group; output goes to ``log_path``."""
    cmd = [sys.executable, "-m", "pipeline.train.main", *args] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "--monitor-interval=0.1", "-m", "pipeline.train.main", *args]
    log = open(log_path, "a")
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    try:
        return subprocess.Popen(cmd, env=child_env(env), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def finish(proc: subprocess.Popen, timeout: float = 240) -> int:
    """Wait for a launch; on timeout kill its whole process group and return 124."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 124


def rank_pids(agent_pid: int, world: int = WORLD, timeout: float = 60) -> dict[int, int]:
    """{rank: pid} of the torchrun agent's worker processes (their ``RANK`` environment variable)."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        found = {}
        try:
            for child in psutil.Process(agent_pid).children(recursive=True):
                try:
                    rank = child.environ().get("RANK")
                except (psutil.Error, OSError):
                    continue
                if rank is not None and "LOCAL_RANK" in child.environ():
                    found.setdefault(int(rank), child.pid)
        except psutil.NoSuchProcess:
            break
        if len(found) == world:
            return found
        time.sleep(0.05)
    raise RuntimeError(f"torchrun agent {agent_pid}: did not find {world} rank processes")


def wait_for(cond, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    """Poll ``cond()`` every 10 ms; RuntimeError when ``proc`` exits first or on timeout."""
    deadline = time.time() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"training exited (code {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def metrics(run_dir: str) -> dict[int, dict]:
    from pipeline.train.metrics import read_metrics

    return {int(r["step"]): r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))}


def losses(run_dir: str) -> dict[int, float]:
    return {s: r["loss"] for s, r in metrics(run_dir).items()}


def last_step(run_dir: str) -> int:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = [0]
    with open(path) as f:
        for line in f:
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError):
                pass
    return max(steps)


def compare_losses(ref: dict[int, float], got: dict[int, float], steps: Iterable[int]) -> list[str]:
    """One line per step whose loss is missing or not bit-equal to the reference."""
    out = []
    for s in steps:
        if s not in got:
            out.append(f"step {s}: no loss logged")
        elif got[s] != ref.get(s):
            out.append(f"step {s}: loss {got[s]!r} != reference {ref.get(s)!r}")
    return out


# -- sample accounting --------------------------------------------------------------------------------------
Sample = tuple  # (dataset, episode_id, frame)


def surviving_history(run_dir: str) -> tuple[dict[int, dict[int, list]], int]:
    """({rank: {step: samples}}, replayed records): the last record of each step per rank file."""
    from pipeline.train.metrics import read_sample_log

    d = os.path.join(run_dir, "samples")
    hist, replayed = {}, 0
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        rank = int(name.split("_")[1].split(".")[0])
        hist[rank] = read_sample_log(os.path.join(d, name))
        with open(os.path.join(d, name)) as f:
            replayed += sum(1 for line in f if line.endswith("}\n")) - len(hist[rank])  # whole records
    return hist, max(0, replayed)


def epoch_multisets(hist: dict[int, dict[int, list]], steps: Iterable[int] | None = None
                    ) -> dict[int, collections.Counter]:
    """epoch -> Counter of (dataset, episode_id, frame) over every rank (only ``steps`` if given)."""
    keep = None if steps is None else set(steps)
    out: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for per_step in hist.values():
        for step, samples in per_step.items():
            if keep is not None and step not in keep:
                continue
            for epoch, ds, ep, frame in samples:
                out[int(epoch if epoch is not None else -1)][(ds, ep, int(frame))] += 1
    return dict(out)


def account(ref: dict[int, collections.Counter], got: dict[int, collections.Counter]) -> tuple[int, int]:
    """(lost, repeated): per epoch, reference samples missing from ``got`` and extra uses in ``got``."""
    lost = repeated = 0
    for epoch in set(ref) | set(got):
        r, g = ref.get(epoch, collections.Counter()), got.get(epoch, collections.Counter())
        lost += sum((r - g).values())
        repeated += sum((g - r).values())
    return lost, repeated


def plan_check(ref: dict[int, collections.Counter], *, epoch_frames: int, global_batch: int,
               steps: int) -> list[str]:
    """The reference against the epoch plan: each frame at most once per epoch, and each full epoch
    uses ``epoch_frames - epoch_frames % global_batch`` distinct frames."""
    problems, per_epoch = [], (epoch_frames // global_batch) * global_batch
    full_epochs = (steps * global_batch) // per_epoch
    for epoch, counter in sorted(ref.items()):
        dup = sum(c - 1 for c in counter.values() if c > 1)
        if dup:
            problems.append(f"reference epoch {epoch}: {dup} samples used twice")
        if epoch < full_epochs and len(counter) != per_epoch:
            problems.append(f"reference epoch {epoch}: {len(counter)} distinct frames, plan says {per_epoch}")
    return problems


# -- the scenario ---------------------------------------------------------------------------------------------
def _reference(ctx: FaultContext, args_for, name: str = "reference") -> str:
    run_dir = workdir_dir(ctx, name)
    proc = launch(args_for(run_dir), os.path.join(ctx.workdir, f"{name}.log"))
    code = finish(proc)
    if code != 0:
        raise RuntimeError(f"{name} run failed (exit {code}); see {ctx.workdir}/{name}.log")
    return run_dir


def run(ctx: FaultContext) -> ScenarioResult:
    result = ScenarioResult(scenario="rank_kill")
    rng = random.Random(ctx.seed)
    trials = 1 if ctx.quick else 5
    max_steps, save_every = (12, 4) if ctx.quick else (24, 5)
    t0 = time.time()
    curated, mixture, epoch_frames = prepare_data(ctx)
    result.details.update(prepare_s=round(time.time() - t0, 1), epoch_frames=epoch_frames, max_steps=max_steps,
                          save_every=save_every, world_size=WORLD, global_batch=WORLD * BATCH)

    def args_for(run_dir: str) -> list[str]:
        return train_args(run_dir, max_steps=max_steps, save_every=save_every, data=(curated, mixture))

    ref_dir = _reference(ctx, args_for)
    ref_loss = losses(ref_dir)
    ref_hist, _ = surviving_history(ref_dir)
    ref_sets = epoch_multisets(ref_hist)
    problems = compare_losses(ref_loss, ref_loss, range(1, max_steps + 1))
    problems += plan_check(ref_sets, epoch_frames=epoch_frames, global_batch=WORLD * BATCH, steps=max_steps)
    result.details["reference_epochs"] = {e: sum(c.values()) for e, c in sorted(ref_sets.items())}
    if problems:
        result.trial(False, "reference run: " + "; ".join(problems[:3]))
        return result

    kill_steps = rng.sample(range(2, max_steps - 2), trials) if trials <= max_steps - 4 else \
        [rng.randrange(2, max_steps - 2) for _ in range(trials)]
    result.details["trials"] = []
    for i, kill_step in enumerate(kill_steps):
        victim = (i + rng.randrange(WORLD)) % WORLD
        info = _trial(ctx, i, kill_step, victim, args_for, ref_loss, ref_sets, max_steps)
        result.details["trials"].append(info)
        result.samples_lost += info.get("samples_lost", 0)
        result.samples_repeated += info.get("samples_repeated", 0)
        result.trial(not info["problems"], f"trial {i} (kill rank {victim} at step {kill_step}): "
                     + "; ".join(info["problems"][:3]), recover_s=info.get("recover_s", 0.0))
        ctx.log(f"trial {i}: kill rank {victim} after step {kill_step} -> "
                f"{'ok' if not info['problems'] else info['problems'][:2]}")
    result.details["recover_s_definition"] = ("SIGKILL -> resumed run completes the killed step again "
                                              "(its first step when the checkpoint was at the killed step)")
    return result


def _trial(ctx: FaultContext, i: int, kill_step: int, victim: int, args_for, ref_loss: dict,
           ref_sets: dict, max_steps: int) -> dict:
    from pipeline.train.checkpoint import list_checkpoints

    run_dir = workdir_dir(ctx, f"trial{i}")
    log_path = os.path.join(ctx.workdir, f"trial{i}.log")
    info: dict = {"trial": i, "kill_after_step": kill_step, "victim_rank": victim, "problems": []}
    args = args_for(run_dir)
    proc = launch(args, log_path)
    try:
        wait_for(lambda: last_step(run_dir) >= kill_step, proc, 180, f"step {kill_step}")
        pid = rank_pids(proc.pid)[victim]
        os.kill(pid, signal.SIGKILL)  # kill -9 from outside
        t_kill = time.time()
    except RuntimeError as e:
        finish(proc, timeout=5)
        info["problems"].append(str(e))
        return info
    info["killed_exit_code"] = finish(proc, timeout=120)
    info["group_down_s"] = round(time.time() - t_kill, 2)
    killed_step = last_step(run_dir)
    info["killed_at_step"] = killed_step
    info["checkpoints_after_kill"] = [(s, ok) for s, _, ok in list_checkpoints(os.path.join(run_dir, "checkpoints"))]
    if info["killed_exit_code"] == 0:
        info["problems"].append("the killed run exited 0 (the kill landed after the end)")
    code = finish(launch(args, log_path))  # resume=auto, same run dir, same max_steps
    if code != 0:
        info["problems"].append(f"resumed run failed (exit {code}); see {log_path}")
        return info
    with open(os.path.join(run_dir, "summary.json")) as f:
        resumed_from = json.load(f).get("resumed_from") or ""
    resume_step = int(resumed_from.rsplit("_", 1)[1]) if resumed_from else 0
    info["resumed_from_step"] = resume_step
    got = metrics(run_dir)
    target = max(killed_step, resume_step + 1)
    if target in got:
        info["recover_s"] = round(float(got[target]["time"]) - t_kill, 3)
    info["problems"] += compare_losses(ref_loss, {s: r["loss"] for s, r in got.items()}, range(1, max_steps + 1))
    hist, replayed = surviving_history(run_dir)
    info["replayed_step_records"] = replayed
    missing = [f"rank {r} step {s}" for r in range(WORLD) for s in range(1, max_steps + 1)
               if s not in hist.get(r, {})]
    if missing:
        info["problems"].append(f"sample log misses {', '.join(missing[:4])}")
    lost, repeated = account(ref_sets, epoch_multisets(hist))
    info.update(samples_lost=lost, samples_repeated=repeated)
    if lost or repeated:
        info["problems"].append(f"sample accounting vs reference: {lost} lost, {repeated} repeated")
    return info
