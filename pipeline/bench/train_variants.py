"""The variants ``make bench-train`` measures, and how each one's model is built.

Kinds:
- ``ours``: the training step of ``vla train`` (``pipeline.train.parallel.parallelize`` with an
  ``FSDPConfig``; FSDP2 at world size 1, bf16 compute, fp32 gradient reduction) plus grad clip;
  ``fsdp`` holds the ``FSDPConfig`` fields that differ from its defaults.
- ``baseline``: OpenVLA's setting: HF eager attention, full activation checkpointing (every LLM
  layer and ViT block), plain bf16 module, logits at every position, forward + backward.
- ``nofsdp``: a diagnostic: the same model as a plain bf16 module, SDPA, no checkpointing,
  logits at the supervised positions only, forward + backward (what FSDP2 costs at world size 1).

Modules here import torch, transformers and timm only; nothing that the GPU machine lacks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VARIANTS", "Variant", "build_model", "define_variant", "fsdp_config"]


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str
    kind: str = "ours"  # ours | baseline | nofsdp
    fsdp: dict[str, Any] = field(default_factory=dict)
    full_logits: bool = False  # LM head at every position (ours: at the 8 supervised ones)
    float8: bool = False  # torchao float8 matmuls in the LLM's linear layers (needs CUDA + torchao)
    fp32_master: bool = False  # fp32 sharded params (as `vla train`); default bf16 (see the README)
    note: str = ""


def _ours(name: str, note: str, **kw: Any) -> Variant:
    fsdp = {k: v for k, v in kw.items() if k not in ("full_logits", "float8", "fp32_master")}
    extra = {k: v for k, v in kw.items() if k in ("full_logits", "float8", "fp32_master")}
    return Variant(name=name, fsdp=fsdp, note=note, **extra)


VARIANTS: dict[str, Variant] = {v.name: v for v in (  # in the order `--variants all` runs them: most telling first
    Variant(name="baseline", kind="baseline", note="HF eager, full AC, plain bf16 module, full logits"),
    _ours("default", "FSDPConfig defaults: what `vla train` runs"),
    _ours("reshard_root", "root resharded after forward too (crashed on torch 2.11 before the fix)",
          reshard_root=True),
    _ours("sdpa_cudnn", "cuDNN attention first", sdpa_backend="cudnn"),
    _ours("sdpa_flash", "flash attention first", sdpa_backend="flash"),
    _ours("units_2", "2 blocks per FSDP unit", blocks_per_unit=2),
    _ours("units_4", "4 blocks per FSDP unit", blocks_per_unit=4),
    _ours("no_reshard", "blocks keep gathered params until backward", reshard_after_forward=False),
    _ours("ac_op", "every block, recompute all but matmuls/attention", activation_checkpointing="op"),
    _ours("ac_selective", "checkpoint every 2nd block", activation_checkpointing="selective"),
    _ours("full_logits", "LM head at every position (without the supervised-positions lever)",
          full_logits=True),
    _ours("compile", "torch.compile (inductor) per block", compile="inductor"),
    Variant(name="nofsdp", kind="nofsdp", note="plain bf16 module, no AC, no FSDP2 (diagnostic)"),
    _ours("fp32_master", "fp32 sharded params, bf16 compute (the dtypes of `vla train`)", fp32_master=True),
    _ours("ac_full", "checkpoint every block", activation_checkpointing="full"),
    _ours("sdpa_efficient", "memory-efficient attention first", sdpa_backend="efficient"),
    _ours("float8", "torchao float8 (tensorwise) in the LLM's linear layers; reported apart from bf16",
          float8=True),
)}


def define_variant(spec: str) -> Variant:
    """``NAME:key=value,key=value`` -> an ``ours`` variant (keys: FSDPConfig fields, full_logits,
    float8, fp32_master), e.g. ``fast:compile=inductor,sdpa_backend=cudnn,blocks_per_unit=2``."""
    name, _, body = spec.partition(":")
    if not name or not body:
        raise ValueError(f"--define {spec!r}: expected NAME:key=value[,key=value...]")
    kw = {}
    for item in body.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--define {spec!r}: {item!r} is not key=value")
        kw[key.strip()] = _parse_value(value.strip())
    variant = _ours(name, f"--define {body}", **kw)
    fsdp_config(variant, smoke=False)  # checks the keys and values now
    return variant


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return text


def fsdp_config(variant: Variant, *, smoke: bool) -> Any:
    """The variant's ``FSDPConfig``. Under ``--smoke`` (CPU) inductor becomes aot_eager: the same
    dynamo/AOT-autograd trace without C++ code generation."""
    from pipeline.train.parallel import FSDPConfig

    known = {f.name for f in dataclasses.fields(FSDPConfig)}
    unknown = sorted(set(variant.fsdp) - known)
    if unknown:
        raise ValueError(f"variant {variant.name}: unknown FSDPConfig keys {unknown}")
    cfg = FSDPConfig(**variant.fsdp)
    if smoke and cfg.compile == "inductor":
        cfg = dataclasses.replace(cfg, compile="aot_eager")
    return cfg


def build_model(variant: Variant, *, preset: str, overrides: dict, device: Any, mesh: Any, smoke: bool) -> Any:
    """The variant's model on ``device``, ready for its step (FSDP2 / AC / compile applied)."""
    import torch

    from pipeline.model import VLAConfig, build_vla

    attn = "eager" if variant.kind == "baseline" else "sdpa"
    cfg = VLAConfig(preset=preset, attn_implementation=attn, **overrides)
    model = build_vla(cfg, vocab_size=32001, pad_token_id=32000, device=device)  # Llama-2 + <PAD>
    if not variant.fp32_master:
        model = model.to(torch.bfloat16)
    model.train()
    if variant.kind == "baseline":
        _hf_full_checkpointing(model)
        return model
    if variant.kind == "nofsdp":
        return model
    if variant.float8:
        _convert_float8(model)
    from pipeline.train.parallel import parallelize

    return parallelize(model, mesh, fsdp_config(variant, smoke=smoke), param_dtype=torch.bfloat16,
                       reduce_dtype=torch.float32)


def _hf_full_checkpointing(model: Any) -> None:
    import warnings

    with warnings.catch_warnings():  # renamed activation_checkpointing_enable in newer transformers
        warnings.simplefilter("ignore", FutureWarning)
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for enc in model.vision:
        enc.vit.set_grad_checkpointing(True)


def float8_unavailable(device: Any) -> str | None:
    """Why the float8 variant cannot run here (None: it can)."""
    import importlib.util

    import torch

    if device.type != "cuda":
        return "float8 matmuls need a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return "float8 matmuls need compute capability >= 8.9"
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not importable (bring its wheel along)"
    return None


def _convert_float8(model: Any) -> None:
    """Swap the LLM decoder layers' linear layers to torchao's float8 training linear (tensorwise
    dynamic scaling); the vision towers, projector and LM head stay bf16."""
    from torch import nn
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    def eligible(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(model.llm.model.layers, config=Float8LinearConfig(), module_filter_fn=eligible)
