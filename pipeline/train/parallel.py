"""Process group, device mesh and FSDP2 application.

``ParallelDims`` owns the data-parallel degrees and their checks and builds the device mesh lazily:

- ``fsdp.mode=full``: a 1-D mesh ``("dp_shard",)`` over all ranks (ZeRO-3 style sharding).
- ``fsdp.mode=hybrid``: a 2-D mesh ``("dp_replicate", "dp_shard")``: parameters are sharded within
  a node and replicated across nodes (HSDP). ``shard_size`` is the number of ranks per node (0 =
  ``LOCAL_WORLD_SIZE`` from torchrun); any node count works, including one process per node.

``apply_fsdp`` wraps every FSDP unit (transformer blocks, vision encoders) first, then the root.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import UserError

__all__ = [
    "ParallelDims",
    "init_distributed",
    "apply_fsdp",
    "apply_activation_checkpointing",
    "resolve_dtype",
    "resolve_device",
    "rank_and_world",
    "barrier",
]

log = logging.getLogger("pipeline.train")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device=cuda: no CUDA device is available (use device=cpu or device=auto)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name != "cpu":
        raise UserError(f"device={name!r}: expected auto, cpu or cuda")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device, *, key: str) -> torch.dtype:
    """``auto`` -> bfloat16 on GPU, float32 on CPU (fast and deterministic there)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise UserError(f"{key}={name!r}: expected auto, float32, bfloat16 or float16")
    return _DTYPES[name]


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def init_distributed(device: torch.device, timeout_s: int = 600) -> bool:
    """Join the process group from the torchrun env, or create a 1-rank one.

    Returns True when this call created the group (the caller then destroys it). A group that
    already exists (a Ray Train worker, a test harness) is reused as is.
    """
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:  # a 1-rank group on an in-memory store: no port, no env vars left behind
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return True


@dataclass(kw_only=True)
class ParallelDims:
    """Data-parallel layout of ``world_size`` ranks.

    ``dp_shard`` ranks share one copy of the parameters (sharded); ``dp_replicate`` copies exist.
    """

    world_size: int
    mode: str = "full"
    shard_size: int = 0
    device_type: str = "cpu"
    _mesh: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("full", "hybrid"):
            raise UserError(f"fsdp.mode={self.mode!r}: expected full or hybrid")
        if self.mode == "full":
            self.shard_size = self.world_size
        elif self.shard_size <= 0:
            self.shard_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        if self.shard_size <= 0 or self.world_size % self.shard_size:
            raise UserError(f"fsdp.shard_size={self.shard_size}: must divide the world size "
                            f"{self.world_size} (ranks per node)")

    @property
    def dp_shard(self) -> int:
        return self.shard_size

    @property
    def dp_replicate(self) -> int:
        return self.world_size // self.shard_size

    @property
    def hybrid_enabled(self) -> bool:
        return self.mode == "hybrid"

    @property
    def fsdp_enabled(self) -> bool:
        return True

    @property
    def mesh(self):
        if self._mesh is None:
            self._mesh = self._build_mesh()
        return self._mesh

    def _build_mesh(self):
        from torch.distributed.device_mesh import init_device_mesh

        if self.hybrid_enabled:
            return init_device_mesh(self.device_type, (self.dp_replicate, self.dp_shard),
                                    mesh_dim_names=("dp_replicate", "dp_shard"))
        return init_device_mesh(self.device_type, (self.world_size,), mesh_dim_names=("dp_shard",))


def apply_activation_checkpointing(units: list[nn.Module], mode: str, *, every: int = 2) -> int:
    """Wrap FSDP units with activation checkpointing in place; returns how many were wrapped.

    ``none``: nothing; ``full``: every unit; ``selective``: every ``every``-th unit.
    Units must be children of some parent (the wrapper replaces them in their parent).
    """
    if mode == "none":
        return 0
    if mode not in ("full", "selective"):
        raise UserError(f"fsdp.activation_checkpointing={mode!r}: expected none, selective or full")
    wrapped = 0
    for i, unit in enumerate(units):
        if mode == "selective" and i % max(1, every):
            continue
        unit.forward = functools.partial(_checkpointed_forward, unit.forward)  # keeps FQNs unchanged
        wrapped += 1
    return wrapped


def apply_fsdp(
    model: nn.Module,
    mesh: Any,
    *,
    units: list[nn.Module],
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2 ``fully_shard`` on every unit (in order), then on the root module."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for i, unit in enumerate(units):
        # the last unit is gathered again right away by the root's backward: keep it unsharded
        last = i == len(units) - 1
        fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and not last)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


def _checkpointed_forward(forward, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
