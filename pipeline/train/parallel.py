"""Process group, device mesh and FSDP2 application.

``ParallelDims`` owns the data-parallel degrees and their checks and builds the device mesh lazily:

- ``fsdp.mode=full``: a 1-D mesh ``("dp_shard",)`` over all ranks (ZeRO-3 style sharding).
- ``fsdp.mode=hybrid``: a 2-D mesh ``("dp_replicate", "dp_shard")``: parameters are sharded within
  a node and replicated across nodes (HSDP). ``shard_size`` is the number of ranks per node (0 =
  ``LOCAL_WORLD_SIZE`` from torchrun); any node count works, including one process per node.

``parallelize`` is the one place the training step is shaped (``FSDPConfig``): per block (every
vision block, the projector, every LLM layer) an attention-kernel choice, activation checkpointing
and ``torch.compile``, in that order (innermost first); then ``apply_fsdp`` shards groups of
consecutive blocks as FSDP units and finally the root (embeddings, final norm, LM head).
``vla train`` and ``make bench-train`` both go through it.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import ConfigError, UserError

__all__ = [
    "AC_MODES",
    "COMPILE_MODES",
    "FSDPConfig",
    "SDPA_BACKENDS",
    "ParallelDims",
    "parallelize",
    "group_blocks",
    "apply_sdpa_backend",
    "apply_compile",
    "init_distributed",
    "apply_fsdp",
    "apply_activation_checkpointing",
    "resolve_dtype",
    "resolve_device",
    "rank_and_world",
    "barrier",
]

log = logging.getLogger("pipeline.train")

AC_MODES = ("none", "selective", "op", "full")
COMPILE_MODES = ("none", "inductor", "aot_eager")
SDPA_BACKENDS = {"auto": None, "flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}

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
class FSDPConfig:
    """How the training step is parallelized and compiled (``fsdp.*`` of ``vla train``)."""

    mode: str = field(default="full", metadata={"help": "full (1-D mesh) | hybrid (shard in node, replicate across)"})
    shard_size: int = field(default=0, metadata={"help": "hybrid: ranks per node (0: LOCAL_WORLD_SIZE)"})
    param_dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16"})
    reduce_dtype: str = field(default="float32", metadata={"help": "gradient reduce-scatter dtype"})
    reshard_after_forward: bool = field(default=True, metadata={"help": "blocks: free gathered params after forward (gather again in backward)"})
    reshard_root: bool = field(default=False, metadata={"help": "root (embeddings, LM head): free gathered params after forward"})
    blocks_per_unit: int = field(default=1, metadata={"help": "consecutive blocks (of one tower / the LLM) per FSDP unit: fewer, larger all-gathers"})
    activation_checkpointing: str = field(default="none", metadata={"help": "none | selective (every ac_every-th block) | op (every block, recompute all but matmuls/attention) | full"})
    ac_every: int = field(default=2, metadata={"help": "selective: checkpoint every N-th block"})
    compile: str = field(default="none", metadata={"help": "torch.compile every block: none | inductor | aot_eager (trace only, for debugging)"})
    sdpa_backend: str = field(default="auto", metadata={"help": "attention kernel tried first: auto | flash | cudnn | efficient | math (then efficient, math)"})

    def __post_init__(self) -> None:
        if self.mode not in ("full", "hybrid"):
            raise ConfigError("mode", self.mode, "expected full or hybrid")
        for key, value, allowed in (("activation_checkpointing", self.activation_checkpointing, AC_MODES),
                                    ("compile", self.compile, COMPILE_MODES),
                                    ("sdpa_backend", self.sdpa_backend, tuple(SDPA_BACKENDS))):
            if value not in allowed:
                raise ConfigError(key, value, f"expected one of {', '.join(allowed)}")
        for key in ("blocks_per_unit", "ac_every"):
            if getattr(self, key) < 1:
                raise ConfigError(key, getattr(self, key), "must be >= 1")


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


def parallelize(model: nn.Module, mesh: Any, cfg: FSDPConfig, *, param_dtype: torch.dtype,
                reduce_dtype: torch.dtype) -> nn.Module:
    """Shape the training step of ``model`` (a VLA: ``block_segments()``) as ``cfg`` says, in place."""
    segments = model.block_segments()
    blocks = [block for segment in segments for block in segment]
    apply_sdpa_backend(blocks, cfg.sdpa_backend)
    apply_activation_checkpointing(blocks, cfg.activation_checkpointing, every=cfg.ac_every)
    apply_compile(blocks, cfg.compile)
    return apply_fsdp(model, mesh, units=group_blocks(segments, cfg.blocks_per_unit), param_dtype=param_dtype,
                      reduce_dtype=reduce_dtype, reshard_after_forward=cfg.reshard_after_forward,
                      reshard_root=cfg.reshard_root)


def group_blocks(segments: Sequence[Sequence[nn.Module]], per_unit: int) -> list[list[nn.Module]]:
    """FSDP units: runs of ``per_unit`` consecutive blocks, never across segments (a unit's blocks
    then run back to back in forward and in backward)."""
    return [list(seg[i:i + per_unit]) for seg in segments for i in range(0, len(seg), per_unit)]


def apply_sdpa_backend(blocks: list[nn.Module], backend: str) -> None:
    """Run every block under ``sdpa_kernel``: ``backend`` first, then the efficient and math kernels
    (for inputs the first cannot take, e.g. flash with a padding mask). Innermost wrapper, so an
    activation-checkpoint recompute picks the same kernel as the forward."""
    if SDPA_BACKENDS[backend] is None:
        return
    from torch.nn.attention import SDPBackend

    order = [getattr(SDPBackend, SDPA_BACKENDS[name]) for name in (backend, "efficient", "math")]
    order = list(dict.fromkeys(order))
    for block in blocks:
        block.forward = functools.partial(_sdpa_forward, order, _sdpa_priority_kwargs(), block.forward)


def apply_activation_checkpointing(units: list[nn.Module], mode: str, *, every: int = 2) -> int:
    """Wrap blocks with activation checkpointing in place; returns how many were wrapped.

    ``none``: nothing; ``full``: every block; ``selective``: every ``every``-th block; ``op``:
    every block, keeping the outputs of matmuls and attention (recomputing norms, activations,
    rotary embeddings and other cheap element-wise ops in backward).
    """
    if mode == "none":
        return 0
    if mode not in AC_MODES:
        raise UserError(f"fsdp.activation_checkpointing={mode!r}: expected one of {', '.join(AC_MODES)}")
    wrapper = _op_checkpointed_forward if mode == "op" else _checkpointed_forward
    wrapped = 0
    for i, unit in enumerate(units):
        if mode == "selective" and i % max(1, every):
            continue
        unit.forward = functools.partial(wrapper, unit.forward)  # keeps FQNs unchanged
        wrapped += 1
    return wrapped


def apply_compile(blocks: list[nn.Module], backend: str) -> None:
    """``torch.compile`` each block's forward (after AC; FSDP's hooks stay outside, eager)."""
    if backend == "none":
        return
    for block in blocks:
        block.forward = torch.compile(block.forward, backend=backend)


def apply_fsdp(
    model: nn.Module,
    mesh: Any,
    *,
    units: Sequence[nn.Module | Sequence[nn.Module]],
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    reshard_after_forward: bool = True,
    reshard_root: bool = True,
) -> nn.Module:
    """FSDP2 ``fully_shard`` on every unit (a module or a list of modules sharing one all-gather),
    in order, then on the root module."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for i, unit in enumerate(units):
        # the last unit is gathered again right away by the root's backward: keep it unsharded
        last = i == len(units) - 1
        modules = list(unit) if isinstance(unit, (list, tuple)) else unit
        fully_shard(modules, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and not last)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_root)
    return model


def _sdpa_forward(backends: list[Any], options: dict, forward, *args: Any, **kwargs: Any) -> Any:
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backends, **options):
        return forward(*args, **kwargs)


def _checkpointed_forward(forward, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _op_checkpointed_forward(forward, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    context = functools.partial(create_selective_checkpoint_contexts, _save_matmul_and_attention)
    return checkpoint(forward, *args, use_reentrant=False, context_fn=context, **kwargs)


def _save_matmul_and_attention(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    if op in _saved_ops():
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@functools.cache
def _saved_ops() -> frozenset:
    """The aten ops whose outputs op-level AC keeps: matmuls and every SDPA kernel there is."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_mm")
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def _sdpa_priority_kwargs() -> dict:
    """``set_priority=True`` where ``sdpa_kernel`` has it (the order of our list then counts)."""
    from torch.nn.attention import sdpa_kernel

    return {"set_priority": True} if "set_priority" in inspect.signature(sdpa_kernel).parameters else {}
