"""AdamW with decay / no-decay parameter groups and the learning-rate schedule.

No weight decay for biases, norms and embeddings (every parameter with fewer than 2 dims, plus
any parameter whose name marks it as a norm or embedding). Schedules: ``constant`` (OpenVLA's
default, 2e-5), ``warmup_constant`` and ``warmup_cosine`` (linear warmup, cosine decay to
``min_lr_ratio * lr`` at ``decay_steps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.errors import ConfigError

__all__ = ["OptimConfig", "build_optimizer", "build_scheduler", "param_groups", "lr_factor", "clip_grad_norm"]

_NO_DECAY_MARKERS = ("norm", "embed", "bias", "ln_", "position", "cls_token", "reg_token", "pos_embed")
SCHEDULES = ("constant", "warmup_constant", "warmup_cosine")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate (OpenVLA: 2e-5 constant)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decay for matrices (not biases/norms/embeddings)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW eps"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global grad norm (<= 0: off)"})
    schedule: str = field(default="constant", metadata={"help": "constant | warmup_constant | warmup_cosine"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps"})
    decay_steps: int = field(default=0, metadata={"help": "cosine end step (0: stop.max_steps)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    fused: bool = field(default=False, metadata={"help": "fused AdamW kernel (GPU)"})

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", self.schedule, f"expected one of {', '.join(SCHEDULES)}")
        if self.lr <= 0:
            raise ConfigError("lr", self.lr, "must be > 0")
        for key in ("warmup_steps", "decay_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(key, getattr(self, key), "must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")


def _no_decay(name: str, p: torch.Tensor) -> bool:
    lname = name.lower()
    return p.ndim < 2 or any(m in lname for m in _NO_DECAY_MARKERS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups in a stable (named_parameters) order: decayed matrices, everything else."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    if cfg.fused:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kwargs)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of ``cfg.lr`` for the update that follows ``step`` completed updates."""
    if cfg.schedule == "constant":
        return 1.0
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "warmup_constant":
        return 1.0
    end = cfg.decay_steps or max_steps
    span = max(1, end - cfg.warmup_steps)
    progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    """A ``LambdaLR`` (Stateful: its ``last_epoch`` counter is checkpointed)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global grad-norm clip across FSDP shards (DTensor aware); returns the pre-clip norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm
