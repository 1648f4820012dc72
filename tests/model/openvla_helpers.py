"""A tiny OpenVLA-layout checkpoint built the way OpenVLA's HF code builds its model, independently of
``pipeline.model``'s own mapping: whole timm towers (final norm, SigLIP attention-pool head and the
unused last block included; LayerScale renamed to ``scale_factor``), a fc1/fc2/fc3 projector and a
Llama, saved as hand-split shards + index with an OpenVLA ``config.json`` (``norm_stats`` inside).

``Reference.logits`` is OpenVLA's forward from ``modeling_prismatic.py``: each tower's
``get_intermediate_layers(n={depth - 2})`` patch features, concatenated, projected, inserted after BOS.
"""

from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from tests.vla_export_helpers import STATS, hand_unnormalize  # noqa: F401  (re-exported)

SMALL = dict(preset="small", vision_depth=2, llm_hidden_size=64, llm_num_layers=2, llm_num_heads=4,
             llm_intermediate_size=128)
DATASET = "toy_robot"
# the export helpers' statistics (un-normalized by hand there), under this checkpoint's dataset name
NORM_STATS = {DATASET: STATS["demo_ds"]}


class Reference(nn.Module):
    """The OpenVLA module tree: vision_backbone.{featurizer,fused_featurizer}, projector.fc1-3, language_model."""

    def __init__(self, cfg, rows: int, seed: int = 0) -> None:
        import timm
        from transformers import LlamaConfig, LlamaForCausalLM

        super().__init__()
        torch.manual_seed(seed)
        cfg = cfg.resolved()
        specs = cfg.vision_specs
        towers = []
        for spec in specs:
            kw = {k: v for k, v in spec.timm_kwargs.items() if k != "global_pool"}  # SigLIP keeps its 'map' head
            towers.append(timm.create_model(spec.timm_model, **kw))
        self.vision_backbone = nn.Module()
        self.vision_backbone.featurizer, self.vision_backbone.fused_featurizer = towers
        for name, p in self.vision_backbone.named_parameters():
            if name.endswith("gamma"):  # timm starts LayerScale at 1e-5: make the blocks matter
                p.data.uniform_(0.5, 1.5)
        self.means = [torch.tensor(s.mean).view(1, 3, 1, 1) for s in specs]
        self.stds = [torch.tensor(s.std).view(1, 3, 1, 1) for s in specs]
        dim = sum(t.embed_dim for t in towers)
        self.projector = nn.Module()
        self.projector.fc1 = nn.Linear(dim, 4 * dim)
        self.projector.fc2 = nn.Linear(4 * dim, cfg.llm_hidden_size)
        self.projector.fc3 = nn.Linear(cfg.llm_hidden_size, cfg.llm_hidden_size)
        self.language_model = LlamaForCausalLM(LlamaConfig(
            vocab_size=rows, hidden_size=cfg.llm_hidden_size, intermediate_size=cfg.llm_intermediate_size,
            num_hidden_layers=cfg.llm_num_layers, num_attention_heads=cfg.llm_num_heads,
            num_key_value_heads=cfg.llm_num_kv_heads, max_position_embeddings=cfg.llm_max_position_embeddings,
            rms_norm_eps=cfg.llm_rms_norm_eps, rope_theta=cfg.llm_rope_theta, tie_word_embeddings=False))

    def openvla_state(self) -> dict[str, torch.Tensor]:
        """Tensor names as OpenVLA's checkpoint has them (timm ``gamma`` -> ``scale_factor``)."""
        return {re.sub(r"\.ls([12])\.gamma$", r".ls\1.scale_factor", k): v.detach().clone().contiguous()
                for k, v in self.state_dict().items()}

    @torch.no_grad()
    def logits(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        towers = (self.vision_backbone.featurizer, self.vision_backbone.fused_featurizer)
        feats = []
        for tower, mean, std in zip(towers, self.means, self.stds):
            x = (pixel_values - mean) / std
            feats.append(tower.get_intermediate_layers(x, n={len(tower.blocks) - 2})[0])
        p = self.projector
        projected = p.fc3(nn.functional.gelu(p.fc2(nn.functional.gelu(p.fc1(torch.cat(feats, dim=2))))))
        emb = self.language_model.get_input_embeddings()(input_ids)
        embeds = torch.cat([emb[:, :1], projected, emb[:, 1:]], dim=1)
        return self.language_model(inputs_embeds=embeds).logits


def openvla_config_json(cfg, rows: int, stats: dict, *, ours_block: bool = True) -> dict:
    """OpenVLA's config.json fields (+ our exact-config block, needed for a non-7b architecture)."""
    cfg = cfg.resolved()
    meta = {
        "model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"],
        "vision_backbone_id": "dinosiglip-vit-so-224px", "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp", "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive", "image_sizes": [224, 224], "pad_token_id": cfg.pad_token_id,
        "pad_to_multiple_of": 64, "n_action_bins": 256, "norm_stats": stats, "torch_dtype": "float32",
        "text_config": {"model_type": "llama", "vocab_size": rows, "hidden_size": cfg.llm_hidden_size,
                        "intermediate_size": cfg.llm_intermediate_size, "num_hidden_layers": cfg.llm_num_layers,
                        "num_attention_heads": cfg.llm_num_heads, "rms_norm_eps": cfg.llm_rms_norm_eps},
    }
    if ours_block:
        meta["vla_pipeline"] = {"vla_config": {k: v for k, v in cfg.to_dict().items() if k != "init"}}
    return meta


def write_openvla_checkpoint(path: str, state: dict[str, torch.Tensor], meta: dict, tokenizer,
                             shards: int = 3) -> str:
    """Hand-split ``state`` into ``shards`` files + ``model.safetensors.index.json``, plus config + tokenizer."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(meta, f)
    tokenizer.save_pretrained(path)
    return path


def small_config(tokenizer):
    from pipeline.model.presets import VLAConfig

    return VLAConfig(**SMALL, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id).resolved()
