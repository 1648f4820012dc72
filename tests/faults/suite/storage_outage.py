"""Scenario "storage_outage": the GCS emulator goes down for a few seconds and comes back.

Trials (a real gcp-storage-emulator process, stopped and restarted on the same port and data dir):

- ``upload``: a real tiny-model checkpoint (CheckpointManager: DCP model + Adam state, JSON states,
  config files) is saved to gs://; the emulator is stopped right before the k-th file of the upload
  and restarted ``outage_s`` later. Pass: save() returns, the remote file set and sizes equal a local
  reference save, COMMIT exists, and the checkpoint loads back into a fresh model bit-exactly.
- ``upload_budget``: the same, but the outage outlasts a short retry budget. Pass: save() raises a
  one-line StorageUnavailable naming the URL and the attempts; after the restart no COMMIT exists for
  that step and ``find_latest`` still answers the previous committed checkpoint.
- ``stream``: a training stream reads curated shards from gs://; the emulator is stopped after the
  stream is built and before its first batch (the episode reads run into the outage). Pass: the epoch delivers every frame exactly once, no episode counted corrupt or
  replaced.
- ``stream_budget``: the outage outlasts the budget while streaming. Pass: next() raises
  StorageUnavailable (the episode is not silently skipped or replaced).
- full mode also: ``train_upload`` / ``train_upload_budget``: a real ``vla train`` subprocess saving to
  gs://, the emulator stopped while step 2's save pauses after its DCP shards (hooks.SaveFault, pause),
  so the upload runs into the outage. Pass: exit 0 and step 2 committed with its files / exit 2 with
  one ``error:`` line naming the URL and the attempts, step 2 without COMMIT, step 1 committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Any

from tests.faults.suite.core import REPO_ROOT, FaultContext, ScenarioResult, WarningLines, patched_env
from tests.faults.suite.hooks import save_fault_args

BUCKET_PREFIX = "gs://test-bucket/storage-outage"
_ENV_KEYS = ("STORAGE_EMULATOR_HOST", "VLA_STORAGE_RETRY_MAX_S", "VLA_STORAGE_RETRIES", "VLA_STORAGE_RETRY_BASE_S",
             "VLA_GCSFS_RETRIES")


def _env(**values: str):
    return patched_env(values, keys=_ENV_KEYS)


class _Outage:
    """Stops the emulator (now, from the caller's thread) and restarts it ``seconds`` later (or never)."""

    def __init__(self, emu: Any, seconds: float | None) -> None:
        self.emu, self.seconds = emu, seconds
        self.t_stop = self.t_up = 0.0
        self._timer: threading.Timer | None = None

    def begin(self) -> None:
        self.t_stop = time.time()
        self.emu.stop()
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self._restart)
            self._timer.start()

    def _restart(self) -> None:
        self.emu.start()
        self.t_up = time.time()

    def end(self) -> None:
        """Wait for the scheduled restart, or restart now when there was none."""
        if self._timer is not None:
            self._timer.join()
        elif self.emu.proc is None:
            self._restart()

    @property
    def down_s(self) -> float:
        return round(self.t_up - self.t_stop, 2) if self.t_up else 0.0


# -- checkpoint upload ----------------------------------------------------------------------------
class _JsonState:
    def __init__(self, state: dict) -> None:
        self.state = dict(state)

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)


def _tiny_model(seed: int):
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.GELU(), torch.nn.Linear(128, 7))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 96)).square().mean().backward()
    opt.step()
    return model, opt


def _manager(root: str, model: Any, opt: Any, step: int):
    from pipeline.train.checkpoint import CheckpointConfig, CheckpointManager, ModelOptimState

    states = {"app": ModelOptimState(model, opt), "train": _JsonState({"epoch": 0, "note": "storage_outage"}),
              "data": _JsonState({"position": step * 8})}
    files = {"config.yaml": "model:\n  preset: tiny\n", "model_config.json": '{"hidden": 128}\n'}
    return CheckpointManager(CheckpointConfig(save_every=1, keep_last=0), root=root, states=states, files=files)


def _file_sizes(url: str) -> dict[str, int]:
    from pipeline import fs

    fsys, path = fs.get_fs(url)
    found = fsys.find(path, detail=True) if fs.is_remote(url) else {
        os.path.join(d, n): {"size": os.path.getsize(os.path.join(d, n))} for d, _, ns in os.walk(path) for n in ns}
    return {os.path.relpath(p, path).replace(os.sep, "/"): int(info["size"]) for p, info in found.items()}


@contextmanager
def _outage_at_upload_file(emu: Any, k: int, seconds: float | None, marker: str):
    """Wrap fs.copy_file (what a checkpoint upload calls per file) so the emulator stops right before
    the k-th file copied to a gs:// URL under ``marker``."""
    from pipeline import fs

    real = fs.copy_file
    outage = _Outage(emu, seconds)
    count = {"n": 0}

    def copy_file(src: str, dst: str) -> None:
        if str(dst).startswith("gs://") and marker in str(dst):
            count["n"] += 1
            if count["n"] == k:
                outage.begin()
        real(src, dst)

    fs.copy_file = copy_file
    try:
        yield outage, count
    finally:
        fs.copy_file = real


def _upload_trial(ctx: FaultContext, emu: Any, result: ScenarioResult, root: str, *, step: int, k: int,
                  outage_s: float, cap: WarningLines) -> None:
    import torch

    from pipeline import fs
    from pipeline.train.checkpoint import COMMIT, step_dir_name

    model, opt = _tiny_model(ctx.seed + step)
    ref_root = ctx.path("ref", f"s{step}", "x")[:-2]
    _manager(ref_root, model, opt, step).save(step, force=True)
    want = _file_sizes(os.path.join(ref_root, step_dir_name(step)))
    cap.lines.clear()
    t0 = time.time()
    url, error = None, ""
    with _outage_at_upload_file(emu, k, outage_s, step_dir_name(step)) as (outage, count):
        try:
            url = _manager(root, model, opt, step).save(step, force=True)
        except Exception as e:  # noqa: BLE001 - judged below
            error = f"{type(e).__name__}: {e}"
        outage.end()
    took = time.time() - t0
    retries = sum("retrying" in m for m in cap.lines)
    got = _file_sizes(fs.join(root, step_dir_name(step))) if url else {}
    fresh, fresh_opt = _tiny_model(ctx.seed + 1000)
    loaded_ok = False
    if url and set(got) == set(want) and all(got[n] == want[n] for n in want if n != ".metadata"):
        _manager(root, fresh, fresh_opt, step).load(url)
        loaded_ok = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    problems = []
    if error:
        problems.append(f"save failed: {error.splitlines()[0][:200]}")
    # DCP's .metadata records the writer's paths: its size differs between a local and a staged save
    same = url is not None and set(got) == set(want) and all(got[n] == want[n] for n in want if n != ".metadata")
    if url and not same:
        missing = sorted(set(want) - set(got))
        problems.append(f"remote files differ from the reference (missing {missing[:3]}, "
                        f"sizes {[n for n in want if n in got and got[n] != want[n]][:3]})")
    if url and COMMIT not in got:
        problems.append("no COMMIT after a successful save")
    if same and not loaded_ok:
        problems.append("checkpoint loaded back with different tensors")
    if count["n"] < k:
        problems.append(f"the outage was never injected (only {count['n']} files uploaded)")
    if not retries:
        problems.append("no retry warning was logged")
    result.details.setdefault("upload", []).append({
        "step": step, "outage_before_file": k, "files": len(want), "outage_s": outage.down_s,
        "retries_logged": retries, "save_s": round(took, 2), "loaded_bit_exact": loaded_ok})
    result.trial(not problems, f"upload step {step}: " + "; ".join(problems), recover_s=took)


def _upload_budget_trial(ctx: FaultContext, emu: Any, result: ScenarioResult, root: str, *, step: int,
                         prev_url: str | None) -> None:
    from pipeline import fs
    from pipeline.train.checkpoint import COMMIT, find_latest, step_dir_name

    model, opt = _tiny_model(ctx.seed + step)
    error, exc = "", None
    t0 = time.time()
    with _env(VLA_STORAGE_RETRY_MAX_S=_budget(ctx)):
        with _outage_at_upload_file(emu, 2, None, step_dir_name(step)) as (outage, _count):
            try:
                _manager(root, model, opt, step).save(step, force=True)
            except Exception as e:  # noqa: BLE001 - the expected outcome
                exc, error = e, str(e)
            took = time.time() - t0
            outage.end()
    url = fs.join(root, step_dir_name(step))
    committed = fs.exists(fs.join(url, COMMIT))
    latest = find_latest(root)
    problems = []
    if exc is None:
        problems.append("save succeeded although storage was down past the retry budget")
    else:
        if type(exc).__name__ != "StorageUnavailable":
            problems.append(f"unclear error type {type(exc).__name__}: {error[:160]}")
        if "\n" in error or "gs://" not in error or "attempt" not in error:
            problems.append(f"error is not one line naming the URL and attempts: {error[:200]!r}")
    if committed:
        problems.append(f"{url} has a COMMIT marker after a failed upload")
    if latest != prev_url:
        problems.append(f"find_latest answered {latest}, expected the previous checkpoint {prev_url}")
    result.details["upload_budget"] = {"error": error[:300], "fail_after_s": round(took, 2),
                                       "commit_exists": committed, "latest_after": latest}
    result.trial(not problems, "upload past budget: " + "; ".join(problems), recover_s=0.0)


def _budget(ctx: FaultContext) -> str:
    """Retry budget (s) of the trials where the outage outlasts it."""
    return "2" if ctx.quick else "4"


# -- stream reads ---------------------------------------------------------------------------------
def _prompt_builder(sample: dict) -> dict:
    import numpy as np

    ids = np.concatenate([[1], np.round((np.asarray(sample["action"]) + 1) * 100).astype(np.int64), [2]])
    return {**sample, "input_ids": ids, "labels": ids.copy()}


def _stream(root: str, tmp: str, batch: int):
    from pipeline.data.mixture.files import Mixture
    from pipeline.data.stream.training_stream import StreamConfig, TrainingStream

    cfg = StreamConfig(num_workers=0, index_cache_dir=os.path.join(tmp, "index"), buffer_bytes=2**20,
                       prefetch_batches=1, io_threads=2)
    mix = Mixture(name="outage", datasets={"bridge_orig": 1.0}, balance_by_size=True)
    return TrainingStream(cfg, data_root=root, mixture=mix, batch_size=batch, seed=3, resolution=8, rank=0,
                          world_size=1, prompt_builder=_prompt_builder, pad_id=0)


def _stream_trial(ctx: FaultContext, emu: Any, result: ScenarioResult, root: str, lengths: list[int], *,
                  outage_s: float | None, trial: int, cap: WarningLines) -> None:

    batch = 4
    expected = {("bridge_orig", f"bridge_orig-{e:05d}", f) for e, t in enumerate(lengths) for f in range(t)}
    steps = sum(lengths) // batch
    seen: list[tuple] = []
    error, exc = "", None
    cap.lines.clear()
    outage = _Outage(emu, outage_s)
    budget = {} if outage_s is not None else {"VLA_STORAGE_RETRY_MAX_S": _budget(ctx)}
    t0 = time.time()
    with _env(**budget), _stream(root, ctx.path(f"stream{trial}", "x")[:-2], batch) as stream:
        try:
            for i in range(steps):
                if i == 0:  # stream built (manifest, index, stats read): every episode read hits the outage
                    outage.begin()
                    t0 = time.time()
                seen += [tuple(m) for m in next(stream)["meta"]]
        except Exception as e:  # noqa: BLE001 - judged below
            exc, error = e, f"{type(e).__name__}: {e}"
        took = time.time() - t0
        stats = dict(stream.stats)
        outage.end()
    counts = Counter(seen)
    lost = len(expected - set(counts)) if exc is None else 0
    repeated = sum(c - 1 for c in counts.values() if c > 1)
    retries = sum("retrying" in m for m in cap.lines)
    problems = []
    if stats.get("corrupt_episodes") or stats.get("replaced_samples"):
        problems.append(f"storage errors were treated as corrupt data: {stats}")
    if outage_s is not None:
        if exc is not None:
            problems.append(f"stream failed during a {outage_s}s outage: {error.splitlines()[0][:200]}")
        if lost or repeated:
            problems.append(f"{lost} frames lost, {repeated} repeated")
        if not retries:
            problems.append("no retry warning was logged (the outage did not hit a read)")
        result.samples_lost += lost
        result.samples_repeated += repeated
        result.details.setdefault("stream", []).append({
            "frames": len(seen), "expected": len(expected), "outage_s": outage.down_s, "retries_logged": retries,
            "epoch_s": round(took, 2)})
        result.trial(not problems, f"stream trial {trial}: " + "; ".join(problems), recover_s=took)
        return
    if exc is None:
        problems.append("the stream went on although storage was down past the retry budget")
    elif type(exc).__name__ != "StorageUnavailable" or "attempt" not in error or "gs://" not in error:
        problems.append(f"unclear stream error: {error[:200]!r}")
    result.details["stream_budget"] = {"error": error[:300], "fail_after_s": round(took, 2),
                                       "frames_before_error": len(seen)}
    result.trial(not problems, "stream past budget: " + "; ".join(problems))


# -- a real `vla train` run (full mode) -------------------------------------------------------------
_TRAIN = ["data.source=synthetic", "per_device_batch=2", "metrics.progress=false", "metrics.tensorboard=false",
          "stop.accuracy=2.0", "model.llm_num_layers=1", "model.vision_depth=1", "stop.max_steps=2",
          "checkpoint.save_every=1", *save_fault_args(step=2, fault="pause", phase="after_shards", pause_s=1)]


def _train_trial(ctx: FaultContext, emu: Any, result: ScenarioResult, *, outage_s: float | None, name: str) -> None:
    """`vla train` saving to gs://; the emulator is stopped while step 2's save pauses after its DCP
    shards (SaveFault, fault=pause), so the upload that follows runs into the outage."""
    import subprocess
    import sys

    from pipeline import fs
    from pipeline.train.checkpoint import COMMIT, list_checkpoints

    root = f"{BUCKET_PREFIX}/s{ctx.seed}/{name}"
    run_dir = ctx.path(name, "x")[:-2]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3", STORAGE_EMULATOR_HOST=emu.host,
               PYTHONPATH=REPO_ROOT)
    if outage_s is None:
        env["VLA_STORAGE_RETRY_MAX_S"] = _budget(ctx)
    cmd = [sys.executable, "-m", "pipeline.cli", "train", *_TRAIN, f"run_dir={run_dir}", f"checkpoint.dir={root}"]
    proc = subprocess.Popen(cmd, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    outage = _Outage(emu, outage_s)
    marker = os.path.join(run_dir, ".save_fault_2")
    deadline = time.time() + 240
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    injected = os.path.exists(marker)
    if injected:
        outage.begin()
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    outage.end()
    took = time.time() - outage.t_stop if injected else 0.0
    ckpts = {fs.basename(u): ok for _, u, ok in list_checkpoints(root)}
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    retries = sum("retrying in" in ln for ln in out.splitlines())
    problems = [] if injected else [f"the save never paused (exit {proc.returncode}): {out.strip()[-300:]!r}"]
    if outage_s is not None:
        if proc.returncode != 0:
            problems.append(f"train failed across a {outage_s}s outage (exit {proc.returncode}): {out.strip()[-300:]!r}")
        elif not ckpts.get("step_000002"):
            problems.append(f"step_000002 not committed: {ckpts}")
        else:
            files = fs.get_fs(root)[0].find(fs.get_fs(fs.join(root, "step_000002"))[1])
            names = {os.path.basename(f) for f in files}
            if not {".metadata", "__0_0.distcp", "train_state.json", "config.yaml", COMMIT} <= names:
                problems.append(f"committed checkpoint lacks files: {sorted(names)}")
        if not retries:
            problems.append("no retry warning in the train output")
    else:
        if proc.returncode != 2 or len(errors) != 1 or "attempt" not in errors[0] or "gs://" not in errors[0]:
            problems.append(f"expected exit 2 and one error line naming the URL and attempts, got exit "
                            f"{proc.returncode}: {errors or out.strip()[-300:]!r}")
        if ckpts.get("step_000002"):
            problems.append("step_000002 has a COMMIT marker although its upload failed")
        if not ckpts.get("step_000001"):
            problems.append(f"the earlier checkpoint step_000001 is not committed: {ckpts}")
    result.details.setdefault("train", []).append({
        "trial": name, "exit": proc.returncode, "outage_s": outage.down_s, "retries_logged": retries,
        "checkpoints": ckpts, "error": errors[0][:300] if errors else ""})
    result.trial(not problems, f"{name}: " + "; ".join(problems), recover_s=took if outage_s else 0.0)


def run(ctx: FaultContext) -> ScenarioResult:
    from pipeline import fs
    from pipeline.data.fixtures.curated import write_curated_dataset
    from tests.support.gcs_emulator import GcsEmulator

    result = ScenarioResult(scenario="storage_outage")
    emu = GcsEmulator()
    saved_filters = warnings.filters[:]
    cap = WarningLines()
    fs_log = logging.getLogger("pipeline.fs")
    fs_log.addHandler(cap)
    try:
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # single-process DCP
        emu.start()
        # quick: gcsfs makes one try per call, so the short budget trials see several of our retries fast
        gcsfs_tries = {"VLA_GCSFS_RETRIES": "1"} if ctx.quick else {}
        with _env(STORAGE_EMULATOR_HOST=emu.host, VLA_STORAGE_RETRY_MAX_S="60", VLA_STORAGE_RETRY_BASE_S="0.5",
                  **gcsfs_tries):
            root = fs.join(BUCKET_PREFIX, f"s{ctx.seed}", "ckpt")
            plan = [(1, 2, 2.0)] if ctx.quick else [(1, 2, 2.0), (2, 4, 3.0), (3, 6, 4.0)]
            for step, k, secs in plan:
                _upload_trial(ctx, emu, result, root, step=step, k=k, outage_s=secs, cap=cap)
            last = fs.join(root, f"step_{plan[-1][0]:06d}")
            _upload_budget_trial(ctx, emu, result, root, step=plan[-1][0] + 1, prev_url=last)

            data_root = fs.join(BUCKET_PREFIX, f"s{ctx.seed}", "curated")
            lengths = [5, 6, 7, 8, 4, 6] if ctx.quick else [5, 6, 7, 8, 4, 6, 9, 3, 6, 6]
            write_curated_dataset(data_root, "bridge_orig", episode_lengths=lengths, shards=2, image_size=16,
                                  seed=ctx.seed)
            outages = [2.0] if ctx.quick else [2.0, 4.0]
            for i, secs in enumerate(outages):
                _stream_trial(ctx, emu, result, data_root, lengths, outage_s=secs, trial=i, cap=cap)
            _stream_trial(ctx, emu, result, data_root, lengths, outage_s=None, trial=len(outages), cap=cap)
            if not ctx.quick:
                _train_trial(ctx, emu, result, outage_s=4.0, name="train_upload")
                _train_trial(ctx, emu, result, outage_s=None, name="train_upload_budget")
    finally:
        fs_log.removeHandler(cap)
        emu.close()
        warnings.filters[:] = saved_filters
    result.details["retry_policy"] = (f"VLA_STORAGE_RETRY_MAX_S=60 (budget trials: {_budget(ctx)}), base 0.5 s, "
                                      f"VLA_GCSFS_RETRIES={'1' if ctx.quick else '2 (default)'}")
    return result
