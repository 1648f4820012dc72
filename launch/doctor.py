"""``vla doctor [launch config]``: preflight checks before spending a cluster allocation.

Checks, in order: library versions (a warning outside the tested ranges), the launch config, the
backend's tools, visible devices, a collective (all_reduce over a local gloo group; nccl when enough
GPUs are visible), the run dir (write, read and delete a probe object), the curated data and
statistics of every mixture dataset, and free disk. Prints a table ``check | status | detail``; any
failure exits 2 naming the first problem.

The config is a launch config (:class:`launch.config.LaunchConfig`; the file is the positional
argument, keys on the command line win over it) whose ``doctor`` section sets the checks:
``vla doctor launch/configs/local_2node.yaml train.run_dir=gs://bucket/run doctor.min_free_gb=20``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from launch.config import LaunchConfig, world_size
from pipeline import fs
from pipeline.errors import UserError

__all__ = ["Check", "CHECKS", "run_checks", "format_table", "run_doctor"]

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


# ------------------------------------------------------------------------------------- checks
def check_versions(cfg: LaunchConfig) -> tuple[str, str]:
    from pipeline.versions import check_versions as versions

    checks = versions()
    warnings = [c.warning for c in checks if c.warning]
    if warnings:
        return WARN, "; ".join(warnings)
    return OK, ", ".join(f"{c.name} {c.version or 'not installed'}" for c in checks)


def check_config(cfg: LaunchConfig) -> tuple[str, str]:
    return OK, (f"backend={cfg.backend} nodes={cfg.nodes} x {cfg.gpus_per_node} proc = "
                f"{world_size(cfg)} ranks; fsdp.mode={cfg.train.fsdp.mode}")


def check_backend(cfg: LaunchConfig) -> tuple[str, str]:
    if cfg.backend == "ray":
        import ray

        address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
        return OK, f"ray {ray.__version__}; " + (f"cluster {address}" if address else "local Ray (no RAY_ADDRESS)")
    if cfg.backend == "torchrun":
        import torch

        return OK, f"torch {torch.__version__} (torch.distributed.run)"
    exe = cfg.slurm.sbatch if cfg.backend == "slurm" else cfg.kuberay.kubectl
    path = shutil.which(exe)
    if path is None:
        return FAIL, f"'{exe}' not found on PATH (needed by backend={cfg.backend})"
    return OK, path


def check_devices(cfg: LaunchConfig) -> tuple[str, str]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return OK, f"cpu only (gloo); this machine has no CUDA device, {cfg.gpus_per_node} proc/node share the CPU"
    names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
    if count < cfg.gpus_per_node:
        return FAIL, f"{count} CUDA device(s) visible but gpus_per_node={cfg.gpus_per_node} ({', '.join(names)})"
    return OK, f"{count} CUDA device(s): {', '.join(names)}"


def _run_group(commands: list[list[str]], timeout_s: int) -> tuple[str, str]:
    """Start every command, wait for all; ``(status, first summary line or the first failure)``."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout_s)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
                q.wait()
            return FAIL, f"all_reduce over {len(procs)} process(es) did not finish in {timeout_s}s"
    for index, (p, out) in enumerate(zip(procs, outputs)):
        if p.returncode != 0:
            return FAIL, f"process {index} failed: {(out.strip().splitlines() or ['no output'])[-1]}"
    return OK, next((line for o in outputs for line in o.splitlines() if line.startswith("all_reduce over")), "")


def check_collective(cfg: LaunchConfig) -> tuple[str, str]:
    if cfg.doctor.collective == "backend" and cfg.backend == "ray":
        return _collective_ray(cfg)
    from launch.torchrun import free_port, node_commands

    start = time.perf_counter()
    if cfg.doctor.collective == "backend":  # torchrun: the same nodes and rendezvous as the training run
        commands = node_commands(cfg, entry=["-m", "launch._collective"])
    else:
        n = max(1, cfg.doctor.collective_procs)
        argv = [sys.executable, "-m", "launch._collective", "--world", str(n), "--port", str(free_port())]
        commands = [[*argv, "--rank", str(r)] for r in range(n)]
    status, detail = _run_group(commands, cfg.doctor.collective_timeout_s)
    if status != OK:
        return status, detail
    where = " (torchrun, launch rendezvous)" if cfg.doctor.collective == "backend" else ""
    return OK, f"{detail}{where} in {time.perf_counter() - start:.1f}s"


def _ray_worker(config: dict) -> None:
    from launch._collective import allreduce_check

    allreduce_check()  # raises on a wrong sum: the run fails


def _collective_ray(cfg: LaunchConfig) -> tuple[str, str]:
    """all_reduce across ``nodes * gpus_per_node`` Ray Train workers (the training layout)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from launch.ray_train import _connect, _use_gpu

    start = time.perf_counter()
    started = _connect(cfg)
    storage = tempfile.mkdtemp(prefix="vla-doctor-")
    try:
        use_gpu = _use_gpu(cfg)
        trainer = TorchTrainer(
            _ray_worker, torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=world_size(cfg), use_gpu=use_gpu,
                                         resources_per_worker={"CPU": cfg.ray.cpus_per_worker,
                                                               **({"GPU": 1} if use_gpu else {})}),
            run_config=RunConfig(name=f"{cfg.job_name}-doctor", storage_path=storage))
        trainer.fit()
        return OK, (f"all_reduce over {world_size(cfg)} {'nccl' if use_gpu else 'gloo'} Ray Train worker(s) "
                    f"= expected sum in {time.perf_counter() - start:.1f}s")
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()


def check_storage(cfg: LaunchConfig) -> tuple[str, str]:
    from pipeline.storage import probe_write

    try:
        seconds = probe_write(cfg.train.run_dir, prefix=".doctor-probe-")
    except UserError as e:
        return FAIL, str(e)
    return OK, f"{cfg.train.run_dir}: write+read+delete probe in {1000 * seconds:.0f} ms"


def check_data(cfg: LaunchConfig) -> tuple[str, str]:
    if cfg.train.data.source == "synthetic":
        return SKIP, "data.source=synthetic (no curated data read)"
    from pipeline.data.manifest import STATISTICS_NAME, CuratedDataset
    from pipeline.data.mixture.files import load_mixture

    curated = cfg.train.data.data_root
    mixture = load_mixture(cfg.train.data.mixture)
    frames = 0
    for name in mixture.active():  # the datasets the stream reads
        dataset = CuratedDataset(curated, name)
        manifest = dataset.read_manifest()
        if manifest is None:
            return FAIL, f"{name}: no manifest.json under {dataset.url} (curate it: vla curate ...)"
        missing = [s["file"] for s in manifest.get("shards", []) if not fs.exists(dataset.file(s["file"]))]
        if missing:
            return FAIL, f"{name}: shard {missing[0]} listed in manifest.json is missing under {dataset.url}"
        stats_url = dataset.file(STATISTICS_NAME)
        if not fs.exists(stats_url) or name not in fs.read_json(stats_url):
            return FAIL, f"{name}: {STATISTICS_NAME} missing or without key '{name}' under {dataset.url}"
        frames += int(manifest.get("total_frames", 0))
    return OK, f"mixture {mixture.name}: {len(mixture.active())} dataset(s), {frames} frames under {curated}"


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_disk(cfg: LaunchConfig) -> tuple[str, str]:
    run_dir = cfg.train.run_dir
    where = _existing_parent(os.getcwd() if fs.is_remote(run_dir) else run_dir)
    free_gb = shutil.disk_usage(where).free / 2**30
    role = "local staging (cwd)" if fs.is_remote(run_dir) else "run_dir"
    if free_gb < cfg.doctor.min_free_gb:
        return FAIL, f"{role} {where}: {free_gb:.1f} GiB free < doctor.min_free_gb={cfg.doctor.min_free_gb}"
    return OK, f"{role} {where}: {free_gb:.1f} GiB free"


CHECKS: dict[str, Callable[[LaunchConfig], tuple[str, str]]] = {
    "versions": check_versions,
    "config": check_config,
    "backend": check_backend,
    "devices": check_devices,
    "collective": check_collective,
    "storage": check_storage,
    "data": check_data,
    "disk": check_disk,
}


def run_checks(cfg: LaunchConfig) -> list[Check]:
    results = []
    for name, fn in CHECKS.items():
        try:
            status, detail = fn(cfg)
        except Exception as e:  # a check that raises is a failed check, reported in its row
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            status, detail = FAIL, f"{type(e).__name__}: {msg}" if not isinstance(e, UserError) else msg
        results.append(Check(name, status, detail))
    return results


def format_table(results: list[Check]) -> str:
    rows = [("check", "status", "detail")] + [dataclasses.astuple(r) for r in results]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


def run_doctor(cfg: LaunchConfig) -> int:
    results = run_checks(cfg)
    print(format_table(results))
    failed = [r for r in results if r.status == FAIL]
    if failed:
        print(f"error: doctor: {failed[0].name}: {failed[0].detail}", file=sys.stderr)
        return 2
    return 0
