"""LoRA adapters for the VLA with ``peft`` (injected in place: the model stays a ``VLA``).

OpenVLA's LoRA recipe: rank 32, ``alpha = min(rank, 16)``, dropout 0, Gaussian init of A (B = 0,
so the adapted model starts exactly at the base model), every linear layer adapted, lr 5e-4.
Here ``target=all-linear`` means every ``nn.Linear`` of the LLM decoder layers (q/k/v/o, gate/up/
down); the LM head, the embeddings and the vision encoders stay frozen; ``projector=true`` adapts
the projector's linears too. Only the LoRA matrices require grad.

The adapter layout is described by a small JSON dict (``lora_spec``) saved with every checkpoint
(``lora_config.json``): rebuilding the same layout on a plain VLA (:func:`apply_lora_spec`) makes
the checkpoint loadable anywhere; :func:`merge_lora` folds the adapters back into plain
``nn.Linear`` weights (``W + B @ A * alpha / rank``), so the merged model is an ordinary VLA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pipeline.errors import ConfigError, UserError

__all__ = ["LoRAConfig", "LORA_FILE", "lora_spec", "apply_lora", "apply_lora_spec", "merge_lora",
           "target_modules", "trainable_summary"]

LORA_FILE = "lora_config.json"
ADAPTER = "default"
_INITS = ("gaussian", "kaiming")


@dataclass(kw_only=True)
class LoRAConfig:
    rank: int = field(default=32, metadata={"help": "LoRA rank r (OpenVLA: 32)"})
    alpha: float = field(default=0.0, metadata={"help": "LoRA alpha (0: min(rank, 16), OpenVLA's choice)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input (OpenVLA: 0)"})
    target: str = field(default="all-linear", metadata={
        "help": "all-linear (every linear of the LLM decoder layers) | comma list of layer names, e.g. q_proj,v_proj"})
    projector: bool = field(default=False, metadata={"help": "also adapt the projector's linear layers"})
    init: str = field(default="gaussian", metadata={"help": "init of A: gaussian (OpenVLA) | kaiming (B is 0 either way)"})
    merge_on_export: bool = field(default=True, metadata={
        "help": "at the end, merge the adapters and export to <run_dir>/export (same format as vla export)"})
    save_adapter: bool = field(default=True, metadata={
        "help": "with merge_on_export: also write the un-merged adapters as a standalone peft adapter to <run_dir>/adapter"})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError("rank", self.rank, "must be >= 1 (OpenVLA: 32)")
        if self.alpha < 0:
            raise ConfigError("alpha", self.alpha, "must be >= 0 (0: min(rank, 16))")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "must be in [0, 1)")
        if self.init not in _INITS:
            raise ConfigError("init", self.init, "expected gaussian or kaiming")
        if not self.target.strip():
            raise ConfigError("target", self.target, "expected all-linear or a comma list of layer names (q_proj,v_proj)")

    @property
    def resolved_alpha(self) -> float:
        return float(self.alpha) if self.alpha > 0 else float(min(self.rank, 16))


def _linear_names(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def target_modules(model: Any, cfg: LoRAConfig) -> list[str]:
    """Fully qualified names of the linear layers to adapt (sorted, non-empty)."""
    names = _linear_names(model.llm.model.layers, "llm.model.layers")
    if cfg.target != "all-linear":
        wanted = {t.strip() for t in cfg.target.split(",") if t.strip()}
        leaves = {n.rsplit(".", 1)[-1] for n in names}
        unknown = sorted(wanted - leaves)
        if unknown:
            raise UserError(f"lora.target={cfg.target}: no LLM linear layer named {', '.join(unknown)}; "
                            f"expected all-linear or some of {', '.join(sorted(leaves))}")
        names = [n for n in names if n.rsplit(".", 1)[-1] in wanted]
    if cfg.projector:
        names += _linear_names(model.projector, "projector")
    return sorted(names)


def lora_spec(model: Any, cfg: LoRAConfig) -> dict:
    """The JSON-able adapter layout (saved as ``lora_config.json``)."""
    return {"format": 1, "rank": cfg.rank, "alpha": cfg.resolved_alpha, "dropout": cfg.dropout,
            "init": cfg.init, "targets": target_modules(model, cfg)}


def apply_lora_spec(model: Any, spec: dict) -> Any:
    """Inject LoRA layers described by ``spec`` into ``model`` in place; freezes everything else."""
    from peft import LoraConfig, inject_adapter_in_model

    init = True if spec.get("init") == "kaiming" else "gaussian"
    targets = [re.escape(t) for t in spec["targets"]]
    peft_cfg = LoraConfig(r=int(spec["rank"]), lora_alpha=float(spec["alpha"]), lora_dropout=float(spec["dropout"]),
                          target_modules="|".join(targets), init_lora_weights=init, bias="none")
    inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def apply_lora(model: Any, cfg: LoRAConfig) -> tuple[Any, dict]:
    """``(model with adapters, spec)``; the LoRA init draws from the torch RNG (seed it first)."""
    spec = lora_spec(model, cfg)
    return apply_lora_spec(model, spec), spec


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base linear and put the plain ``nn.Linear`` back (in place)."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        layer.merge(adapter_names=[ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_summary(model: nn.Module) -> dict:
    """``{"trainable_params", "total_params", "trainable_fraction"}`` (global counts under FSDP too)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_fraction": trainable / max(1, total)}
