"""``vla launch``: dispatch a :class:`LaunchConfig` to its backend."""

from __future__ import annotations

from launch.config import LaunchConfig
from pipeline.config import import_object

__all__ = ["LaunchConfig", "BACKEND_RUNNERS", "run_launch"]

# backend -> "module:function(cfg) -> int"; modules are imported only when used (ray, kubectl).
BACKEND_RUNNERS = {
    "torchrun": "launch.torchrun:run_torchrun",
    "slurm": "launch.slurm:run_slurm",
    "ray": "launch.ray_train:run_ray",
    "kuberay": "launch.kuberay:run_kuberay",
}


def run_launch(cfg: LaunchConfig) -> int:
    return int(import_object(BACKEND_RUNNERS[cfg.backend])(cfg) or 0)
