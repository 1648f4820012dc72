"""Scalar sinks of the training metrics: TensorBoard and Weights & Biases.

:class:`pipeline.train.metrics.MetricsLogger` (rank 0) hands every sink the same ``(key, value)``
pairs for each logged step (the scalars of ``metrics.jsonl``: ``train/loss``, ``train/lr``, ...,
``dataset_accuracy/<name>``), so the curves agree across TensorBoard, W&B and the JSONL file.
Both libraries are imported only when their sink is switched on.

W&B never sees a credential: the run's config arrives as the saved, already redacted
``config.yaml`` text, and W&B's own metadata capture (command line, environment, git, code) and
console capture are off, since a command line may carry ``gs://user:TOKEN@bucket`` URLs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Protocol

from pipeline.errors import UserError

__all__ = ["ScalarSink", "TensorBoardSink", "WandbSink"]


class ScalarSink(Protocol):
    def write(self, step: int, scalars: Iterable[tuple[str, float]]) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Event files under ``log_dir``; events past ``start_step`` from an earlier run are purged."""

    def __init__(self, log_dir: str, *, start_step: int) -> None:
        self._writer = _summary_writer_cls()(log_dir, purge_step=start_step + 1)

    def write(self, step: int, scalars: Iterable[tuple[str, float]]) -> None:
        for key, value in scalars:
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._writer.close()


def _summary_writer_cls():
    """torch's SummaryWriter without importing TensorFlow (~4 s, ~1 GB per rank): TensorBoard's
    own switch for that is the presence of the ``tensorboard.compat.notf`` module."""
    import sys
    import types

    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


class WandbSink:
    """One W&B run per training process (a resumed run starts a new W&B run under the same name).
    Its files go to ``<local run dir>/wandb/``; ``metrics.wandb_mode=offline`` writes only there
    (upload later with ``wandb sync``)."""

    def __init__(self, cfg: Any, *, local_dir: str, default_name: str, run_config: str) -> None:
        import yaml

        wandb = _import_wandb()
        settings = wandb.Settings(save_code=False, disable_git=True, x_disable_meta=True, console="off")
        try:
            self._run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity or None,
                                   name=cfg.wandb_run_name or default_name, dir=local_dir,
                                   mode=cfg.wandb_mode or None, config=yaml.safe_load(run_config or "{}") or {},
                                   settings=settings)
        except Exception as e:  # wandb raises its own UsageError/CommError: no key, no network, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"metrics.wandb=true: W&B could not start a run ({first}); log in "
                            "(WANDB_API_KEY) or set metrics.wandb_mode=offline") from None

    @property
    def run_dir(self) -> str:
        """This run's W&B directory (``.../wandb/run-*`` or ``.../wandb/offline-run-*``)."""
        return os.path.dirname(self._run.dir)

    def write(self, step: int, scalars: Iterable[tuple[str, float]]) -> None:
        self._run.log(dict(scalars), step=step)

    def close(self) -> None:
        self._run.finish()


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise UserError("metrics.wandb=true needs the wandb package: pip install 'vla-pipeline[train]'") from None
    return wandb
