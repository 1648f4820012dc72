"""Write what a launch did into ``<run_dir>/launch/`` (the resolved config, scripts, manifests)."""

from __future__ import annotations

from pipeline import fs
from pipeline.config import to_yaml

__all__ = ["launch_dir", "record", "record_config"]


def launch_dir(run_dir: str) -> str:
    return fs.join(run_dir, "launch")


def record(run_dir: str, name: str, text: str) -> str:
    """Write ``text`` to ``<run_dir>/launch/<name>`` atomically; returns the URL."""
    url = fs.join(launch_dir(run_dir), name)
    fs.makedirs(launch_dir(run_dir))
    fs.write_text(url, text)
    return url


def record_config(cfg) -> str:
    """Save the resolved launch config as ``<run_dir>/launch/launch.yaml``."""
    return record(cfg.train.run_dir, "launch.yaml", to_yaml(cfg))
