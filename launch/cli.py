"""``vla launch``: dispatch a :class:`LaunchConfig` to its backend."""

from __future__ import annotations

import importlib

from launch.config import LaunchConfig

__all__ = ["LaunchConfig", "BACKEND_RUNNERS", "run_launch"]

# backend -> "module:function(cfg) -> int"; modules are imported only when used (ray, kubectl).
BACKEND_RUNNERS = {
    "torchrun": "launch.torchrun:run_torchrun",
    "slurm": "launch.slurm:run_slurm",
    "ray": "launch.ray_train:run_ray",
    "kuberay": "launch.kuberay:run_kuberay",
}


def run_launch(cfg: LaunchConfig) -> int:
    module, _, name = BACKEND_RUNNERS[cfg.backend].partition(":")
    return int(getattr(importlib.import_module(module), name)(cfg) or 0)
