"""``TrainConfig``: the typed config tree of ``vla train`` (omegaconf structured dataclasses).

Sections: ``model`` (VLAConfig), ``data`` (with ``data.stream``), ``optim``, ``fsdp``,
``checkpoint``, ``stop``, ``metrics``, ``eval``, ``debug``; top level: ``run_dir``, ``seed``,
``resume``, ``nproc``, batch sizes. Sections compose (no config inherits another); each checks its
values in ``__post_init__`` and raises ConfigError, which the loader reports with the full key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.config import helpfield
from pipeline.data.manifest import CURATED_VERSION
from pipeline.data.stream.training_stream import StreamConfig
from pipeline.errors import ConfigError, UserError
from pipeline.model.presets import VLAConfig
from pipeline.train.checkpoint import CheckpointConfig
from pipeline.train.evaluate import EvalConfig
from pipeline.train.metrics import MetricsConfig
from pipeline.train.optim import OptimConfig
from pipeline.train.parallel import FSDPConfig

__all__ = [
    "TrainConfig",
    "DataConfig",
    "FSDPConfig",
    "StopConfig",
    "DebugConfig",
    "CheckpointConfig",
    "EvalConfig",
    "MetricsConfig",
    "OptimConfig",
    "grad_accum_steps",
]


@dataclass(kw_only=True)
class DataConfig:
    """Where the training data comes from (curated mixture or synthetic) and the text tokenizer; the
    stream's own knobs are the ``stream`` section (``pipeline.data.stream.training_stream.StreamConfig``,
    checked by the stream). The per-rank batch is ``per_device_batch``."""

    source: str = helpfield("stream", "stream (curated data) | synthetic (tests, benchmarks)")
    data_root: str = helpfield("curated", f"curated output root (local dir or gs://), holds <dataset>/{CURATED_VERSION}/")
    mixture: str = helpfield("demo", "mixture name or YAML path (dataset_mixtures/<name>.yaml)")
    tokenizer: str = helpfield("demo", "demo (offline BPE) or an HF tokenizer dir URL (local or gs://)")
    seed: int = helpfield(-1, "data order/augmentation seed (-1: the run seed)")
    resolution: int = helpfield(0, "image size fed to the model (0: model.image_size)")
    synthetic_tasks: int = helpfield(8, "synthetic source: number of distinct (instruction, action) tasks")
    stream: StreamConfig = helpfield(StreamConfig(num_workers=0))

    def __post_init__(self) -> None:
        if self.source not in ("stream", "synthetic"):
            raise ConfigError("source", self.source, "expected stream or synthetic")
        if self.resolution != 0 and self.resolution < 8:
            raise ConfigError("resolution", self.resolution, "must be >= 8 (0: model.image_size)")
        if self.synthetic_tasks < 1:
            raise ConfigError("synthetic_tasks", self.synthetic_tasks, "must be >= 1")

    def run_seed(self, seed: int) -> int:
        """The data seed of a run whose seed is ``seed``."""
        return seed if self.seed < 0 else self.seed


@dataclass(kw_only=True)
class StopConfig:
    accuracy: float = field(default=0.95, metadata={"help": "stop when the moving average action accuracy >= this (>1: off)"})
    window: int = field(default=20, metadata={"help": "moving-average window (steps)"})
    max_steps: int = field(default=1000, metadata={"help": "stop after this many optimizer steps"})
    max_epochs: float = field(default=0.0, metadata={"help": "stop after this many data epochs (0: off)"})

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError("max_steps", self.max_steps, "must be >= 1")
        if self.window < 1:
            raise ConfigError("window", self.window, "must be >= 1")


@dataclass(kw_only=True)
class DebugConfig:
    """Drills and probes, run through the hook points of the loop (pipeline.train.hooks)."""

    crash_at_step: int = helpfield(-1, "fault injection: crash_rank exits hard once after this step (-1: off)")
    crash_rank: int = helpfield(0, "fault injection: the rank that exits (or gets SIGTERM)")
    term_at_step: int = helpfield(-1, "preemption drill: SIGTERM to crash_rank after this step (-1: off)")
    sample_log: bool = helpfield(False, "accounting: each rank appends its per-step (epoch, dataset, episode_id, frame) to run_dir/samples/")
    hooks: str = helpfield("", "import string module:factory of extra TrainHooks (pipeline.train.hooks), called with hook_args")
    hook_args: dict[str, Any] = helpfield({}, "keyword arguments of the hooks factory (debug.hook_args.<name>=<value>)")

    def __post_init__(self) -> None:
        if self.hooks and (":" not in self.hooks or self.hooks.startswith(":") or self.hooks.endswith(":")):
            raise ConfigError("hooks", self.hooks, "expected an import string module:factory")
        if self.hook_args and not self.hooks:
            raise ConfigError("hook_args", self.hook_args, "set debug.hooks (the factory they are for)")


@dataclass(kw_only=True)
class TrainConfig:
    run_dir: str = field(default="runs/train", metadata={"help": "metrics, TensorBoard, checkpoints (local dir)"})
    seed: int = field(default=0, metadata={"help": "seed of every random choice (init, data order, augment)"})
    resume: str = field(default="auto", metadata={"help": "auto (latest committed checkpoint) | none | checkpoint URL"})
    nproc: int = field(default=1, metadata={"help": "processes per node (TrainConfig.nproc_per_node); >1 launches torchrun"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    per_device_batch: int = field(default=8, metadata={"help": "micro-batch per rank"})
    global_batch: int = field(default=0, metadata={"help": "samples per optimizer step (0: per_device_batch * world)"})
    deterministic: bool = field(default=True, metadata={"help": "torch.use_deterministic_algorithms (CPU)"})
    model: VLAConfig = field(default_factory=lambda: VLAConfig(preset="tiny"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    # keys that moved: an old key in a config or override is refused with its new name
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        **{f"data.{k}": f"data.stream.{k}" for k in ("cameras", "augment", "buffer_bytes", "num_workers",
                                                     "prefetch_batches", "io_threads", "split", "index_cache_dir")},
        "data.batch_size": "per_device_batch",
        **{f"debug.{k}": "debug.hooks (the fault suite: tests/faults/suite/hooks.py)"
           for k in ("save_fault_step", "save_fault", "save_fault_phase", "save_pause_s")},
    }

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ConfigError("nproc", self.nproc, "must be >= 1")
        if self.per_device_batch < 1:
            raise ConfigError("per_device_batch", self.per_device_batch, "must be >= 1")
        if self.global_batch < 0:
            raise ConfigError("global_batch", self.global_batch, "must be >= 0 (0: per_device_batch * world)")
        if not self.resume:
            raise ConfigError("resume", self.resume, "expected auto, none or a checkpoint URL")
        self._check_weights_sources()

    def _check_weights_sources(self) -> None:
        """The model's tokenizer must fit its size (``vla finetune`` takes both from its base)."""
        from pipeline.model.init_weights import check_tokenizer_choice

        check_tokenizer_choice(self.model, self.data.tokenizer)

    @property
    def checkpoint_root(self) -> str:
        from pipeline import fs

        return self.checkpoint.dir or fs.join(self.run_dir, "checkpoints")


def grad_accum_steps(global_batch: int, per_device_batch: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that ``global = accum * world * per_device``."""
    per_step = per_device_batch * world_size
    if global_batch == 0:
        return 1
    if global_batch % per_step:
        raise UserError(f"global_batch={global_batch} is not divisible by world size {world_size} x "
                        f"per_device_batch={per_device_batch} = {per_step}; pick a multiple of {per_step}")
    return global_batch // per_step
