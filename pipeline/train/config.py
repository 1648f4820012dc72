"""``TrainConfig``: the typed config tree of ``vla train`` (omegaconf structured dataclasses).

Sections: ``model`` (VLAConfig), ``data``, ``optim``, ``fsdp``, ``checkpoint``, ``stop``,
``metrics``, ``eval``, ``debug``; top level: ``run_dir``, ``seed``, ``resume``, ``nproc``, batch sizes.
Every value is checked in ``__post_init__`` (one line naming the key and the fix).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.config import helpfield
from pipeline.data.stream.training_stream import StreamConfig
from pipeline.errors import UserError
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
class DataConfig(StreamConfig):
    """The training stream's config (``pipeline.data.stream.training_stream.StreamConfig``) plus the data source and
    tokenizer. ``batch_size``, ``seed`` and ``resolution`` come from the run (per_device_batch,
    seed, model.image_size) unless set here."""

    source: str = helpfield("stream", "stream (curated data) | synthetic (tests, benchmarks)")
    data_root: str = helpfield("curated", "curated output root (local dir or gs://), holds <dataset>/1.0.0/")
    mixture: str = helpfield("demo", "mixture name or YAML path (dataset_mixtures/<name>.yaml)")
    tokenizer: str = helpfield("demo", "demo (offline BPE) or an HF tokenizer dir URL (local or gs://)")
    batch_size: int = helpfield(0, "leave 0: the per-rank batch is per_device_batch")
    seed: int = helpfield(-1, "data order/augmentation seed (-1: the run seed)")
    resolution: int = helpfield(0, "image size fed to the model (0: model.image_size)")
    num_workers: int = helpfield(0, "decode processes (0 = decode in the training process)")
    synthetic_tasks: int = helpfield(8, "synthetic source: number of distinct (instruction, action) tasks")

    def __post_init__(self) -> None:
        if self.source not in ("stream", "synthetic"):
            raise UserError(f"data.source={self.source!r}: expected stream or synthetic")
        if self.batch_size != 0:
            raise UserError(f"data.batch_size={self.batch_size}: set per_device_batch instead (leave 0)")
        if self.resolution != 0 and self.resolution < 8:
            raise UserError(f"data.resolution={self.resolution}: must be >= 8 (0: model.image_size)")
        if self.synthetic_tasks < 1:
            raise UserError(f"data.synthetic_tasks={self.synthetic_tasks}: must be >= 1")
        from pipeline.data.schema import CAMERA_SLOTS

        if not self.cameras or any(c not in CAMERA_SLOTS for c in self.cameras):
            raise UserError(f"data.cameras={list(self.cameras)}: pick one or more of {list(CAMERA_SLOTS)}")

    def stream_config(self, *, batch_size: int, seed: int, resolution: int) -> StreamConfig:
        """The ``StreamConfig`` for this run (run-level values filled in, checks applied)."""
        names = {f.name for f in dataclasses.fields(StreamConfig)}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in names}
        values.update(batch_size=batch_size, seed=seed if self.seed < 0 else self.seed,
                      resolution=self.resolution or resolution, cameras=list(self.cameras))
        return StreamConfig(**values)


@dataclass(kw_only=True)
class StopConfig:
    accuracy: float = field(default=0.95, metadata={"help": "stop when the moving average action accuracy >= this (>1: off)"})
    window: int = field(default=20, metadata={"help": "moving-average window (steps)"})
    max_steps: int = field(default=1000, metadata={"help": "stop after this many optimizer steps"})
    max_epochs: float = field(default=0.0, metadata={"help": "stop after this many data epochs (0: off)"})

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise UserError(f"stop.max_steps={self.max_steps}: must be >= 1")
        if self.window < 1:
            raise UserError(f"stop.window={self.window}: must be >= 1")


@dataclass(kw_only=True)
class DebugConfig:
    crash_at_step: int = field(default=-1, metadata={"help": "fault injection: os._exit(1) after this step (-1: off)"})
    crash_rank: int = field(default=0, metadata={"help": "fault injection: the rank that exits (or gets SIGTERM)"})
    term_at_step: int = field(default=-1, metadata={"help": "preemption drill: SIGTERM to crash_rank after this step (-1: off)"})
    sample_log: bool = field(default=False, metadata={"help": "accounting: each rank appends its per-step (epoch, dataset, episode_id, frame) to run_dir/samples/"})
    save_fault_step: int = field(default=-1, metadata={"help": "fault injection: crash_rank faults once inside this step's checkpoint save, before COMMIT (-1: off)"})
    save_fault: str = field(default="kill", metadata={"help": "kill (SIGKILL itself) | pause (sleep save_pause_s: a window for an external kill)"})
    save_fault_phase: str = field(default="before_commit", metadata={"help": "before_commit (all files written/uploaded) | after_shards (DCP shards only)"})
    save_pause_s: float = field(default=30.0, metadata={"help": "save_fault=pause: seconds to sleep"})

    def __post_init__(self) -> None:
        if self.save_fault not in ("kill", "pause"):
            raise UserError(f"debug.save_fault={self.save_fault!r}: expected kill or pause")
        if self.save_fault_phase not in ("before_commit", "after_shards"):
            raise UserError(f"debug.save_fault_phase={self.save_fault_phase!r}: expected before_commit or after_shards")


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

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise UserError(f"nproc={self.nproc}: must be >= 1")
        if self.per_device_batch < 1:
            raise UserError(f"per_device_batch={self.per_device_batch}: must be >= 1")
        if self.global_batch < 0:
            raise UserError(f"global_batch={self.global_batch}: must be >= 0 (0: per_device_batch * world)")
        if self.resume not in ("auto", "none") and not self.resume:
            raise UserError("resume='': expected auto, none or a checkpoint URL")
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
