"""Launchers for the training stage: torchrun, SLURM, Ray Train, KubeRay; plus ``vla doctor``.

Only wiring lives here: every backend runs the same trainer (``pipeline.train.main``) with the
same ``key=value`` overrides derived from one :class:`LaunchConfig`.
"""

from launch.config import BACKENDS, LaunchConfig

__all__ = ["BACKENDS", "LaunchConfig"]
