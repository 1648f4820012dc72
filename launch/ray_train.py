"""Ray backend: ``ray.train.torch.TorchTrainer`` (Train V2) running ``pipeline.train.main.train``.

Ray starts ``nodes * gpus_per_node`` workers, sets up the torch process group (gloo on CPU, nccl
on GPU) and the torchrun-style env vars (RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, ...), then calls
:func:`train_loop` on each. A worker failure tears the group down and Ray starts a new one, up to
``ray.max_failures`` times; the trainer resumes from the latest committed checkpoint in
``run_dir`` (``resume=auto``), so Ray needs no checkpoint of its own. Connects to
``ray.address`` or ``$RAY_ADDRESS`` when set (a KubeRay RayJob sets it), else starts a local Ray.
"""

from __future__ import annotations

import os
import sys

from launch._record import record_config
from launch.config import LaunchConfig, world_size
from launch.trainer import train_overrides
from pipeline import fs
from pipeline.ray_utils import connect_ray

__all__ = ["train_loop", "build_trainer", "run_ray"]

# Environment passed on to workers on a remote cluster (a local Ray inherits the driver's env).
_FORWARD_ENV = ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "GOOGLE_CLOUD_PROJECT")


def train_loop(config: dict) -> None:
    """Per-worker entry: build the TrainConfig from ``config["overrides"]`` and train."""
    from pipeline.config import load_config
    from pipeline.train.config import TrainConfig
    from pipeline.train.main import train

    train(load_config(TrainConfig, list(config["overrides"])))


def _use_gpu(cfg: LaunchConfig) -> bool:
    if cfg.ray.use_gpu != "auto":
        return cfg.ray.use_gpu == "true"
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def _storage(cfg: LaunchConfig):
    """``(storage_path, storage_filesystem)`` for RunConfig; gs:// goes through our fsspec."""
    url = cfg.ray.storage_path or fs.join(cfg.train.run_dir, "ray")
    if not fs.is_remote(url):
        return os.path.abspath(url), None
    import pyarrow.fs

    filesystem, path = fs.get_fs(url)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(filesystem))


def _connect(cfg: LaunchConfig) -> bool:
    """Connect to (or start) Ray; returns True when this call started it."""
    return connect_ray(cfg.ray.address, cfg.ray.num_cpus or 0, log_to_driver=True)


def build_trainer(cfg: LaunchConfig):
    """The TorchTrainer for ``cfg`` (needs a connected Ray for ``ray.use_gpu=auto``)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = _use_gpu(cfg)
    storage_path, storage_fs = _storage(cfg)
    env = {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ}
    run_dir = cfg.train.run_dir if fs.is_remote(cfg.train.run_dir) else os.path.abspath(cfg.train.run_dir)
    return TorchTrainer(
        train_loop,
        train_loop_config={"overrides": train_overrides(cfg, run_dir=run_dir)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=world_size(cfg), use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(
            name=cfg.job_name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            worker_runtime_env={"env_vars": env} if env else None),
    )


def run_ray(cfg: LaunchConfig) -> int:
    if cfg.dry_run:
        print(f"TorchTrainer(num_workers={world_size(cfg)}, max_failures={cfg.ray.max_failures}, "
              f"storage={cfg.ray.storage_path or fs.join(cfg.train.run_dir, 'ray')}) running "
              f"pipeline.train.main.train with: {' '.join(train_overrides(cfg))}")
        return 0
    record_config(cfg)
    import ray

    started = _connect(cfg)
    try:
        trainer = build_trainer(cfg)
        try:
            trainer.fit()
        except Exception as e:  # TrainingFailedError once ray.max_failures restarts are used up
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: ray training failed (ray.max_failures={cfg.ray.max_failures}): {first}",
                  file=sys.stderr)
            return 1
        print(f"ray training finished: {world_size(cfg)} workers, run_dir {cfg.train.run_dir}")
        return 0
    finally:
        if started:
            ray.shutdown()
