"""Scenario ``curation_kill``: SIGKILL a real ``vla curate`` mid-job, re-run it, compare.

Setup: fixture datasets (``DATASETS``) and a mixture of them; one uninterrupted reference curation
(in this process, on a Ray session shared by every re-run). Each trial starts ``python -m
pipeline.cli curate`` (its own local Ray cluster, one worker so the job order is fixed) in a new
process group, waits until the output reaches the trial's kill point (``KILL_POINTS``) and sends
SIGKILL to the whole group. Checks:

- right after the kill: no file under a final name is partial (every shard under its final name is
  a complete, CRC-valid TFRecord equal to its reduce marker; a ``manifest.json`` only exists for a
  dataset whose every listed shard is there with its sha256);
- the re-run (same command) ends with every dataset's files byte-identical to the reference
  (manifest, statistics, quarantine report, dataset_info/features, every shard's sha256), reuses the
  work done before the kill (statuses ``reused``/``resumed``), and leaves no ``.tmp-`` file and no
  ``_parts`` directory. (A kill inside one shard write, a window of milliseconds, leaves the writer's
  ``.tmp-`` file; the ``mid_shard_writes`` trial plants one such file, with the head of a real
  shard, next to what the kill left, and the re-run must remove it.)

``tests/data/curate/test_job.py`` uses :func:`start_curate`, :func:`kill_when` and :func:`compare_outputs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from tests.faults.suite.core import FaultContext, ScenarioResult
from tests.support.ray_session import ray_session

__all__ = ["DATASETS", "KILL_POINTS", "run", "make_sources", "curate_args", "start_curate", "kill_when",
           "snapshot", "compare_outputs", "partial_files"]

DATASETS = ("bridge_orig", "taco_play")


def _ddir(out: str, name: str) -> str:
    from pipeline.data.manifest import CuratedDataset

    return CuratedDataset(out, name).url


def _has(path: str, prefix: str, suffix: str = "") -> bool:
    return os.path.isdir(path) and any(f.startswith(prefix) and f.endswith(suffix) and ".tmp-" not in f
                                       for f in os.listdir(path))


# kill point -> (predicate on the output root, statuses of the re-run)
KILL_POINTS: dict[str, tuple[Callable[[str], bool], list[str]]] = {
    # first source shard of the first dataset mapped, nothing reduced yet
    "early_map": (lambda out: _has(os.path.join(_ddir(out, DATASETS[0]), "_parts"), "src-", ".json"),
                  ["resumed", "curated"]),
    # first output shard of the first dataset written under its final name, others not yet
    "mid_shard_writes": (lambda out: _has(_ddir(out, DATASETS[0]), f"{DATASETS[0]}-train.tfrecord-"),
                         ["resumed", "curated"]),
    # first dataset committed, second one half-way through its maps
    "between_datasets": (lambda out: os.path.exists(os.path.join(_ddir(out, DATASETS[0]), "manifest.json"))
                         and _has(os.path.join(_ddir(out, DATASETS[1]), "_parts"), "src-", ".json"),
                         ["reused", "resumed"]),
}
QUICK_POINTS = ("mid_shard_writes",)


# ------------------------------------------------------------------------------------------ helpers
def make_sources(root: str, datasets: tuple[str, ...] = DATASETS, episodes: int = 9, shards: int = 3) -> tuple[str, str]:
    """Fixture datasets under ``root/raw`` and a mixture YAML of them; returns (raw root, mixture path)."""
    from pipeline.config import load_config
    from pipeline.data.fixtures.datasets import FixtureConfig, run_fixture

    raw = os.path.join(root, "raw")
    with contextlib.redirect_stdout(io.StringIO()):  # its table would mix with the JSON lines
        run_fixture(load_config(FixtureConfig, [f"out={raw}", f"datasets=[{','.join(datasets)}]", f"episodes={episodes}",
                                                f"shards={shards}", "steps=4-6", "image_size=16", "seed=0"]))
    mixture = os.path.join(root, "kill_mix.yaml")
    with open(mixture, "w") as f:
        f.write("name: kill_mix\ndatasets:\n" + "".join(f"  {n}: 1.0\n" for n in datasets))
    return raw, mixture


def curate_args(mixture: str, raw: str, out: str, *extra: str) -> list[str]:
    return ["curate", f"mixture={mixture}", f"source={raw}", f"out={out}", "progress=false", *extra]


def start_curate(args: list[str], ray_tmp: str) -> subprocess.Popen:
    """``python -m pipeline.cli <args>`` with one Ray worker, in its own process group."""
    cmd = [sys.executable, "-m", "pipeline.cli", *args, "ray.num_cpus=1", "workers=1"]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120.0) -> bool:
    """SIGKILL ``proc``'s process group once ``ready()``; False if it ended (or timed out) first."""
    deadline = time.time() + timeout
    hit = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready():
                hit = True
                break
            time.sleep(0.005)
        hit = hit and proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return hit


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(out: str, names: tuple[str, ...] = DATASETS) -> dict[str, str]:
    """``<dataset>/<relative path> -> sha256`` of every file of each curated dataset directory."""
    files = {}
    for name in names:
        base = _ddir(out, name)
        for dirpath, _, fnames in os.walk(base):
            for fname in fnames:
                path = os.path.join(dirpath, fname)
                files[f"{name}/{os.path.relpath(path, base)}"] = _sha(path)
    return files


def compare_outputs(ref: str, out: str, names: tuple[str, ...] = DATASETS) -> list[str]:
    """Differences between two curation outputs (empty = byte-identical) plus leftover temp files."""
    a, b = snapshot(ref, names), snapshot(out, names)
    problems = [f"{k}: missing after re-run" for k in sorted(set(a) - set(b))]
    problems += [f"{k}: left over (not in the uninterrupted run)" for k in sorted(set(b) - set(a))]
    problems += [f"{k}: differs from the uninterrupted run" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return problems


def partial_files(out: str, names: tuple[str, ...] = DATASETS) -> list[str]:
    """Files under a final name that are not complete (checked right after a kill)."""
    import json

    from pipeline.data.io.errors import CorruptRecordError
    from pipeline.data.io.tfrecord import read_records

    problems = []
    for name in names:
        d = _ddir(out, name)
        if not os.path.isdir(d):
            continue
        markers = {}
        parts = os.path.join(d, "_parts")
        for f in sorted(os.listdir(parts)) if os.path.isdir(parts) else []:
            if f.endswith(".json") and ".tmp-" not in f:
                try:
                    with open(os.path.join(parts, f)) as fh:
                        m = json.load(fh)
                except ValueError:
                    problems.append(f"{name}/_parts/{f}: marker is not valid JSON")
                    continue
                if f.startswith("out-"):
                    markers[m["file"]] = m
        for f in sorted(os.listdir(d)):
            path = os.path.join(d, f)
            if ".tmp-" in f or not f.startswith((f"{name}-train.tfrecord-", f"{name}-val.tfrecord-")):
                continue
            try:
                n = sum(1 for _ in read_records(path))
            except CorruptRecordError as e:
                problems.append(f"{name}/{f}: partial shard under its final name ({e.reason})")
                continue
            if f in markers and (markers[f]["sha256"] != _sha(path) or markers[f]["episodes"] != n):
                problems.append(f"{name}/{f}: differs from its reduce marker")
        manifest = os.path.join(d, "manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as fh:
                listed = json.load(fh)
            shards = [*listed["shards"], *listed.get("validation", {}).get("shards", [])]
            for s in shards:
                p = os.path.join(d, s["file"])
                if not os.path.exists(p) or _sha(p) != s["sha256"]:
                    problems.append(f"{name}/manifest.json lists {s['file']} but it is missing or different")
    return problems


def _curate(args: list[str]) -> list[str]:
    from pipeline.config import load_config
    from pipeline.data.curate.job import CurateConfig, curate

    return [r["status"] for r in curate(load_config(CurateConfig, args[1:]))]


# ------------------------------------------------------------------------------------------ scenario
def _plant_partial_write(ref: str, out: str) -> str:
    d = _ddir(out, DATASETS[0])
    name = sorted(f for f in os.listdir(_ddir(ref, DATASETS[0])) if ".tfrecord-" in f)[-1]
    with open(os.path.join(_ddir(ref, DATASETS[0]), name), "rb") as f:
        head = f.read(100)
    with open(os.path.join(d, f"{name}.tmp-5eed0000"), "wb") as f:
        f.write(head)
    return f"{DATASETS[0]}/{name}.tmp-5eed0000"


def _trial(ctx: FaultContext, result: ScenarioResult, point: str, raw: str, mixture: str, ref: str) -> None:
    ready, expected = KILL_POINTS[point]
    out = ctx.path("trials", point, "out")
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    args = curate_args(mixture, raw, out, "num_shards=3")
    try:
        t0 = time.time()
        hit = kill_when(start_curate(args, ray_tmp), lambda: ready(out))
        killed_after = round(time.time() - t0, 2)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    state = sorted(k for k in snapshot(out) if not k.endswith(".npz"))
    failures = [] if hit else [f"{point}: curate ended before the kill point was reached"]
    failures += partial_files(out)
    if point == "mid_shard_writes":
        # a kill inside a shard write (a window of milliseconds, not hit reliably by polling) leaves the
        # writer's temp file: plant one, with the head of a real shard, for the re-run to clean up
        planted = _plant_partial_write(ref, out)
        result.details["planted_partial_write"] = planted
    t1 = time.time()
    statuses = _curate(args)
    recover = time.time() - t1
    if statuses != expected:
        failures.append(f"{point}: re-run statuses {statuses}, expected {expected} (work before the kill not reused)")
    failures += [f"{point}: {p}" for p in compare_outputs(ref, out)]
    ctx.log(f"{point}: killed after {killed_after}s with {len(state)} files, re-run {statuses} in {recover:.1f}s, "
            f"{'ok' if not failures else failures[0]}")
    result.details.setdefault("trials", []).append(
        {"kill_point": point, "killed_after_s": killed_after, "files_at_kill": len(state),
         "shards_at_kill": sum(".tfrecord-" in k and "/_parts/" not in k for k in state),
         "rerun_statuses": statuses, "rerun_s": round(recover, 2), "ok": not failures})
    result.trial(not failures, "; ".join(failures[:3]), recover_s=recover)


def run(ctx: FaultContext) -> ScenarioResult:
    result = ScenarioResult(scenario="curation_kill")
    raw, mixture = make_sources(ctx.workdir)
    ref = ctx.path("reference", "out")
    points = QUICK_POINTS if ctx.quick else tuple(KILL_POINTS)
    with ray_session():
        _curate(curate_args(mixture, raw, ref, "num_shards=3"))
        result.details["reference_files"] = len(snapshot(ref))
        for point in points:
            _trial(ctx, result, point, raw, mixture, ref)
    result.details["datasets"] = list(DATASETS)
    return result
