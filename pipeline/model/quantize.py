"""Inference precision / weight quantization of a ``VLA``.

Modes (``quantization=``):

| mode   | weights                                                     | needs                    |
|--------|-------------------------------------------------------------|--------------------------|
| fp32   | everything float32                                          | CPU or GPU               |
| bf16   | everything bfloat16                                         | CPU or GPU               |
| int8   | LLM decoder Linear layers LLM.int8() (bitsandbytes, fp16 compute), rest bf16 | CUDA GPU + bitsandbytes |
| int4   | LLM decoder Linear layers NF4 4-bit (bitsandbytes, bf16 compute), rest bf16 | CUDA GPU + bitsandbytes |

Quantized: the q/k/v/o attention projections and gate/up/down MLP projections of every Llama
decoder layer (~96% of the 7B LLM's weights). Kept in bf16: token embeddings, the LM head (its
last 256 rows are the action tokens, whose argmax is the prediction), RMSNorms, the projector
and both vision backbones (small, and precision-sensitive). bitsandbytes is the optional ``gpu``
extra (``pip install 'vla-pipeline[gpu]'``) and is imported only for int8/int4.

LLM.int8() quantizes its inputs from fp16: given bf16 it casts them itself and warns
(``MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16``) on every call of every
layer (Python's once-per-location filter is reset whenever any code changes the warning filters).
Each int8 layer is therefore wrapped in :class:`Int8Fp16Linear`, which hands it fp16 and casts the
result back: the cast bitsandbytes would do, without the warning or its per-call cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pipeline.errors import UserError

__all__ = [
    "GPU_MODES",
    "Int8Fp16Linear",
    "MODES",
    "check_mode",
    "compute_dtype",
    "default_dtype",
    "quantize_llm_linears_",
    "resolve_device",
]

MODES = ("fp32", "bf16", "int8", "int4")
GPU_MODES = ("int8", "int4")
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "8bit": "int8", "4bit": "int4", "nf4": "int4"}
INT8_OUTLIER_THRESHOLD = 6.0  # LLM.int8() default: activation columns above this run in fp16


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda:0 when a CUDA GPU is present, else cpu; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"device={device!r}: expected auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device}: this machine has no CUDA GPU; use device=auto or device=cpu")
    return dev


def check_mode(mode: str, device: torch.device) -> str:
    """The canonical mode name; UserError when unknown or when it needs a GPU that is not there."""
    m = _ALIASES.get(str(mode).lower(), str(mode).lower())
    if m == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if m not in MODES:
        raise UserError(f"quantization={mode!r}: expected one of {', '.join(MODES)} (or auto)")
    if m in GPU_MODES:
        if not torch.cuda.is_available():
            raise UserError(f"quantization={m} needs a CUDA GPU (bitsandbytes); this machine has none "
                            "- use bf16 or fp32")
        if device.type != "cuda":
            raise UserError(f"quantization={m} needs device=cuda (bitsandbytes); got device={device}")
        _bitsandbytes(m)
    return m


def compute_dtype(mode: str) -> torch.dtype:
    """dtype of the un-quantized parameters (and the activations) for ``mode``."""
    return torch.float32 if mode == "fp32" else torch.bfloat16


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in ``dtype`` (halves host/GPU memory while loading a bf16 model)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _bitsandbytes(mode: str) -> Any:
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise UserError(f"quantization={mode} needs the bitsandbytes package: "
                        "pip install 'vla-pipeline[gpu]' (or use bf16)") from e
    return bnb


def _llm_linears(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) of every Linear inside the LLM's decoder layers."""
    for layer in model.llm.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    yield parent, name, child


class Int8Fp16Linear(nn.Module):
    """An LLM.int8() layer fed fp16: ``inner(x.half())`` cast back to ``x``'s dtype."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.float16)).to(x.dtype)


def _quantized_linear(bnb: Any, lin: nn.Linear, mode: str, device: torch.device) -> nn.Module:
    has_bias = lin.bias is not None
    w = lin.weight.detach().to("cpu")  # bitsandbytes quantizes when CPU data moves to the GPU
    if mode == "int8":
        q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=has_bias, has_fp16_weights=False,
                                threshold=INT8_OUTLIER_THRESHOLD, device="meta")
        q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=has_bias, compute_dtype=torch.bfloat16,
                              quant_type="nf4", compress_statistics=True, device="meta")
        q.weight = bnb.nn.Params4bit(w.to(torch.bfloat16), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True, module=q)
    if has_bias:
        bias_dtype = torch.float16 if mode == "int8" else torch.bfloat16
        q.bias = nn.Parameter(lin.bias.detach().to("cpu", bias_dtype), requires_grad=False)
    return Int8Fp16Linear(q.to(device)) if mode == "int8" else q.to(device)


def quantize_llm_linears_(model: nn.Module, mode: str, device: torch.device) -> int:
    """Replace the LLM decoder Linear layers of ``model`` (in place) by bitsandbytes int8/NF4
    layers on ``device``; returns how many were replaced. ``mode`` must be int8 or int4."""
    if mode not in GPU_MODES:
        raise ValueError(f"quantize_llm_linears_: mode={mode!r}, expected one of {GPU_MODES}")
    bnb = _bitsandbytes(mode)
    count = 0
    for parent, name in [(p, n) for p, n, _ in _llm_linears(model)]:
        setattr(parent, name, _quantized_linear(bnb, getattr(parent, name), mode, device))
        count += 1  # the bf16 Linear is freed here: nothing else references it
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return count
