"""Training stage: FSDP2 over a device mesh, DCP checkpoints with a COMMIT marker, metrics.

Heavy modules (torch) load on first use of the names below.
"""

__all__ = ["TrainConfig", "train", "run_train", "export_checkpoint", "load_exported", "plot_run"]

_WHERE = {
    "TrainConfig": "pipeline.train.config",
    "train": "pipeline.train.main",
    "run_train": "pipeline.train.main",
    "export_checkpoint": "pipeline.train.export",
    "load_exported": "pipeline.train.export",
    "plot_run": "pipeline.train.plot",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pipeline.train' has no attribute {name!r}")
