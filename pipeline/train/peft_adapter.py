"""LoRA fine-tunes as standalone ``peft`` adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

Tensor names follow peft's saved layout (``base_model.model.<module>.lora_A.weight``; the adapter
name is dropped), with ``<module>`` named as in the base the adapter goes on: our ``VLA`` (``vla``)
or OpenVLA's module tree (``openvla``: ``language_model.model.layers.0.self_attn.q_proj``,
``projector.fc1``). Load it on the un-merged base with
``peft.PeftModel.from_pretrained(base_model, adapter_dir)``. Adapters are saved in float32 (small).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from pipeline import fs
from pipeline.errors import UserError

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "save_peft_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _module_name(our_module: str, fmt: str) -> str:
    if fmt == "vla":
        return our_module
    from pipeline.model.openvla_format import to_openvla_key

    return to_openvla_key(our_module + ".weight")[: -len(".weight")]


def save_peft_adapter(model: Any, spec: dict, out_url: str, *, fmt: str = "vla", base: str = "") -> list[str]:
    """Write the LoRA matrices of ``model`` (adapters injected by :mod:`pipeline.train.lora`, not
    merged) with their ``lora_config.json`` ``spec`` to ``out_url``; returns the file names."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from pipeline.train.lora import ADAPTER

    state, targets = {}, set()
    for key, value in model.state_dict().items():
        if ".lora_" not in key:
            continue
        module, _, rest = key.partition(".lora_")  # "llm.model.layers.0.self_attn.q_proj", "A.default.weight"
        which, _, tail = rest.partition(f".{ADAPTER}.")
        name = _module_name(module, fmt)
        targets.add(name)
        state[f"base_model.model.{name}.lora_{which}.{tail}"] = value.detach().float().cpu().contiguous()
    if not state:
        raise UserError("adapter: this checkpoint has no LoRA adapters (it is not a `vla finetune` checkpoint)")
    cfg = LoraConfig(r=int(spec["rank"]), lora_alpha=float(spec["alpha"]), lora_dropout=float(spec["dropout"]),
                     target_modules=sorted(targets), bias="none", base_model_name_or_path=base or None,
                     init_lora_weights=True if spec.get("init") == "kaiming" else "gaussian")
    with tempfile.TemporaryDirectory(prefix="vla-adapter-") as tmp:
        save_file(state, os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        cfg.save_pretrained(tmp)
        fs.copy_dir(tmp, out_url)
        return sorted(os.listdir(tmp))
