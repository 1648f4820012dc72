"""The trainer command line every backend runs: ``python -m pipeline.train.main key=value ...``.

The launch config's ``train`` section is a typed ``TrainConfig``, checked when the launch config is
parsed. Each backend hands it to its ranks as ``key=value`` overrides: ``run_dir`` and ``resume``
first (every node must see the same run dir), then every key whose value differs from the
``TrainConfig`` default, in the config's order. Parsing them gives back the same ``TrainConfig``.
"""

from __future__ import annotations

import math
from typing import Any

import yaml
from omegaconf import OmegaConf

from launch.config import LaunchConfig
from pipeline.config import flat_keys
from pipeline.train.config import TrainConfig

__all__ = ["TRAIN_MODULE", "train_overrides", "override_value"]

TRAIN_MODULE = "pipeline.train.main"
_FIRST = ("run_dir", "resume")


def override_value(value: Any) -> str:
    """``value`` as the right-hand side of ``key=value`` (YAML flow: parses back to ``value``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _values(train: Any) -> dict[str, Any]:
    """Every leaf key of ``TrainConfig`` (``flat_keys`` order) -> its value in ``train``."""
    tree = OmegaConf.to_container(OmegaConf.structured(train), resolve=True)
    out = {}
    for key, *_ in flat_keys(TrainConfig):
        node = tree
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def train_overrides(cfg: LaunchConfig, run_dir: str | None = None) -> list[str]:
    """``key=value`` strings that rebuild ``cfg.train`` in a rank (see the module doc).

    ``run_dir`` replaces ``cfg.train.run_dir`` (e.g. made absolute for another working directory).
    """
    given, defaults = _values(cfg.train), _values(TrainConfig)
    if run_dir is not None:
        given["run_dir"] = run_dir
    keys = list(_FIRST) + [k for k, v in given.items() if k not in _FIRST and defaults.get(k) != v]
    return [f"{k}={override_value(given[k])}" for k in keys]
