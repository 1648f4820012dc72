"""The trainer command line every backend runs: ``python -m pipeline.train.main key=value ...``.

The launcher owns a few trainer keys (run dir, resume policy, data) and passes everything in
``LaunchConfig.train`` after them, so a ``train`` entry wins over the launcher's value.
"""

from __future__ import annotations

from launch.config import LaunchConfig
from pipeline.errors import UserError

__all__ = ["TRAIN_MODULE", "train_overrides", "check_train_overrides"]

TRAIN_MODULE = "pipeline.train.main"

# launch key -> TrainConfig key
_OWNED = {
    "run_dir": "run_dir",
    "resume": "resume",
    "mixture": "data.mixture",
    "curated": "data.data_root",
}


def train_overrides(cfg: LaunchConfig, run_dir: str | None = None) -> list[str]:
    """``key=value`` strings for the trainer, launcher-owned keys first, then ``cfg.train``.

    ``run_dir`` replaces ``cfg.run_dir`` (e.g. made absolute for another working directory).
    """
    values = {src: getattr(cfg, src) for src in _OWNED}
    if run_dir is not None:
        values["run_dir"] = run_dir
    owned = [f"{dst}={values[src]}" for src, dst in _OWNED.items() if values[src] != ""]
    return owned + list(cfg.train)


def check_train_overrides(cfg: LaunchConfig) -> None:
    """Validate the trainer overrides against ``TrainConfig`` before starting any process.

    Raises UserError naming the bad key. (Imported here: the training config pulls in torch.)
    """
    from pipeline.config import load_config
    from pipeline.train.config import TrainConfig

    try:
        load_config(TrainConfig, train_overrides(cfg))
    except UserError as e:
        raise UserError(f"launch key 'train': {e}") from e
