"""``python -m pipeline.bench.torch_api``: does this torch have what the training step uses?

Prints one JSON line: the torch version, one entry per version-dependent API the training step,
checkpoints and benchmarks use (True: present), and two behaviours run for real on a 1-rank gloo
group on CPU:

- ``fsdp_group_units``: ``fully_shard`` of a list of modules (``fsdp.blocks_per_unit``) trains;
- ``fsdp_walks_dataclass_outputs``: a module returning an unregistered dataclass, with its root
  resharded after forward, survives backward (False on torch 2.11: FSDP2 walks outputs with pytree
  ``tree_flatten``; ``VLAOutput`` is a NamedTuple so it does not depend on this), and
  ``fsdp_namedtuple_outputs`` the same with a NamedTuple (must be True).

Exit code 1 if a required API is missing or a required behaviour fails.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import sys
from typing import Any, NamedTuple

__all__ = ["REQUIRED", "probe", "main"]

# (module, attribute path) the code needs; all present in torch 2.11 through 2.14.1
REQUIRED = (
    ("torch.distributed.fsdp", "fully_shard"), ("torch.distributed.fsdp", "MixedPrecisionPolicy"),
    ("torch.distributed.fsdp", "FSDPModule"), ("torch.distributed.device_mesh", "init_device_mesh"),
    ("torch.distributed.tensor", "DTensor.full_tensor"), ("torch.distributed", "HashStore"),
    ("torch.distributed.checkpoint", "save"), ("torch.distributed.checkpoint", "load"),
    ("torch.distributed.checkpoint", "async_save"), ("torch.distributed.checkpoint", "FileSystemWriter"),
    ("torch.distributed.checkpoint", "FileSystemReader"),
    ("torch.distributed.checkpoint.state_dict", "get_state_dict"),
    ("torch.distributed.checkpoint.state_dict", "set_state_dict"),
    ("torch.distributed.checkpoint.state_dict", "get_model_state_dict"),
    ("torch.distributed.checkpoint.state_dict", "set_model_state_dict"),
    ("torch.nn.attention", "sdpa_kernel"), ("torch.nn.attention", "SDPBackend.FLASH_ATTENTION"),
    ("torch.nn.attention", "SDPBackend.EFFICIENT_ATTENTION"), ("torch.nn.attention", "SDPBackend.CUDNN_ATTENTION"),
    ("torch.nn.attention", "SDPBackend.MATH"),
    ("torch.utils.checkpoint", "create_selective_checkpoint_contexts"),
    ("torch.utils.checkpoint", "CheckpointPolicy.MUST_SAVE"), ("torch", "compile"),
    ("torch.utils.flop_counter", "FlopCounterMode"), ("torch.profiler", "profile"),
)


def _has(module: str, path: str) -> bool:
    try:
        obj: Any = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return False
    return True


class _TupleOut(NamedTuple):
    loss: Any


@dataclasses.dataclass
class _DataclassOut:
    loss: Any


def _fsdp_backward(*, output: type, group_units: bool) -> bool:
    """A 3-layer model under FSDP2 (root resharded after forward), one forward + backward."""
    import torch
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    from pipeline.train.parallel import ParallelDims

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
            self.head = nn.Linear(8, 4)  # a root parameter, as the VLA's LM head

        def forward(self, x: torch.Tensor) -> Any:
            for block in self.blocks:
                x = block(x)
            return output(self.head(x).square().mean())

    torch.manual_seed(0)
    model = Model()
    mesh = ParallelDims(world_size=1).mesh
    units = [list(model.blocks)] if group_units else list(model.blocks)
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    try:
        model(torch.randn(2, 8)).loss.backward()
    except RuntimeError:
        return False
    return all(p.grad is not None for p in model.parameters())


def probe() -> dict:
    import torch
    import torch.distributed as dist

    from pipeline.train.parallel import init_distributed

    result: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0],
                              "cuda": torch.version.cuda, "missing": []}
    for module, path in REQUIRED:
        if not _has(module, path):
            result["missing"].append(f"{module}.{path}")
    if _has("torch.nn.attention", "sdpa_kernel"):
        from torch.nn.attention import sdpa_kernel

        result["sdpa_kernel_set_priority"] = "set_priority" in inspect.signature(sdpa_kernel).parameters
    created = init_distributed(torch.device("cpu"))
    try:
        result["fsdp_group_units"] = _fsdp_backward(output=_TupleOut, group_units=True)
        result["fsdp_namedtuple_outputs"] = _fsdp_backward(output=_TupleOut, group_units=False)
        result["fsdp_walks_dataclass_outputs"] = _fsdp_backward(output=_DataclassOut, group_units=False)
    finally:
        if created:
            dist.destroy_process_group()
    result["ok"] = not result["missing"] and result["fsdp_group_units"] and result["fsdp_namedtuple_outputs"]
    return result


def main() -> int:
    result = probe()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
